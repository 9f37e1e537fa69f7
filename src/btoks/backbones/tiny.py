"""Tiny random-weight backbones for tests, benchmarks and offline demos (no hub access needed).

They run the real transformers code paths (Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Llama) at a few hundred thousand
parameters. The tokenizer is a small byte-level BPE trained on a fixed text so it is identical on every machine.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]

_CORPUS = """
Represent the given image for classification. Find a video that contains the following visual content.
Find a document image that matches the given query. Understand the content of the provided document image.
a photo of a cat sitting on a red sofa. a circle, a square and a triangle in blue, green and yellow.
what color is the shape? which way does the shape move? left right up down. the quick brown fox jumps over
the lazy dog. the stock market rose as investors welcomed the news from the central bank on Tuesday.
handwritten digit zero one two three four five six seven eight nine. a man rides a bicycle along the river.
""".strip()


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A ChatML-style byte-level BPE with the Qwen-VL special tokens (vocabulary ≈ 512)."""
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def _text_kwargs(vocab: int, **extra: Any) -> dict[str, Any]:
    return dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False, **extra,
    )


def tiny_backbone(family: str = "qwen2_vl", seed: int = 0, attn_implementation: str = "eager", **_: Any) -> Any:
    """Build a tiny random-weight backbone adapter: ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl`` or ``llama``."""
    from btoks.backbones.causal_lm import CausalLMBackbone
    from btoks.backbones.qwen_vl import QwenVLBackbone

    tok = tiny_tokenizer()
    vocab = len(tok)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    eos = tok.eos_token_id
    torch.manual_seed(seed)
    if family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(**_text_kwargs(vocab, eos_token_id=eos, pad_token_id=tok.pad_token_id))
        cfg._attn_implementation = attn_implementation
        return CausalLMBackbone(LlamaForCausalLM(cfg).eval(), tok)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model

        vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14)
    elif family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model

        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      patch_size=14, window_size=56, fullatt_block_indexes=[0])
    elif family == "qwen3_vl":
        from transformers import Qwen3VLConfig as Config
        from transformers import Qwen3VLForConditionalGeneration as Model

        rope = {**rope, "mrope_interleaved": True}
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])
    else:
        raise ValueError(f"unknown tiny family {family!r}; expected qwen2_vl, qwen2_5_vl, qwen3_vl or llama")
    text = _text_kwargs(vocab, eos_token_id=eos, bos_token_id=None, pad_token_id=tok.pad_token_id,
                        rope_parameters=rope)
    cfg = Config(text_config=text, vision_config=vision, **ids)
    cfg.tie_word_embeddings = False
    cfg._attn_implementation = attn_implementation
    model = Model(cfg).eval()
    return QwenVLBackbone(model, tok)
