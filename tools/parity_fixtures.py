"""Generate ``tests/fixtures/parity/`` by running the Bottleneck Tokens authors' code (``vlm2emb``).

Run it in a separate environment with the authors' pins (their code is read from a checkout, never copied):

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 transformers==4.57.3 peft==0.18.0 \\
        accelerate==1.12.0 omegaconf==2.3.0 pillow numpy safetensors pyyaml pyarrow pandas
    git clone https://github.com/siryuson/BottleneckTokens /tmp/BottleneckTokens
    /tmp/ref/bin/python tools/parity_fixtures.py --authors-src /tmp/BottleneckTokens/src

Only imports their data loading needs are stubbed (``lance``, ``av``, ``decord``, ``cv2``, ``fitz``,
``qwen_vl_utils``); the model, processor wrapper, GradCache, losses and ``BToksTrainer.training_step`` are
theirs, unmodified. A tiny random Qwen2-VL (weights rounded to float16 so the fixture stays small and exact)
gets their ``BToksTokenInjector`` setup; per case the script records embeddings, the contrastive and
generative losses of one training step and selected gradients. ``tests/test_parity.py`` replays every case
with btoks' paper preset.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STUBBED = ("lance", "av", "decord", "cv2", "fitz", "pymupdf", "qwen_vl_utils")

# The tiny model: shapes shared with tests/test_parity.py through meta.json.
TEXT = dict(vocab_size=520, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=4096, tie_word_embeddings=False, rope_theta=10000.0)
MROPE_SECTION = [2, 3, 3]
VISION = dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14)
LORA = dict(r=16, alpha=32, use_dora=True, target_modules="qkv_proj,o_proj,gate_up_proj,down_proj,k_proj,q_proj,"
            "out_proj,v_proj")  # the authors' configs/peft/lora_default.yaml (dropout set to 0 for replay)
GEN_WEIGHT, TEMPERATURE = 5.0, 0.02
RECORDED = (  # gradients written per case (name suffixes of btoks' unwrapped HF model)
    "model.language_model.layers.0.self_attn.q_proj.weight",
    "model.language_model.layers.1.self_attn.k_proj.weight",
    "model.language_model.layers.1.mlp.down_proj.weight",
    "model.visual.merger.mlp.2.weight",
    "model.visual.blocks.0.attn.qkv.bias",
)
LORA_RECORDED = (
    "model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight",
    "model.language_model.layers.0.self_attn.q_proj.lora_B.default.weight",
    "model.language_model.layers.1.mlp.down_proj.lora_B.default.weight",
    "model.language_model.layers.1.mlp.down_proj.lora_magnitude_vector.default.weight",
    "model.language_model.embed_tokens.token_adapter.trainable_tokens_delta.default",
)
# Pairs: (query text, query image, positive text, positive image, ntp_side). "<image>" marks an image.
IMAGE_PAIRS = [
    ("<image>\nWhat shape is in the picture?\n", "a", "a red circle\n", None, "positive"),
    ("Find the news photo about the bank.\n", None, "<image>\nRepresent the given news image.\n", "b", "query"),
    ("<image>\nWhich way does it move?\n", "b", "left\n", None, "both"),
    ("the quick brown fox\n", None, "the lazy dog jumps over the fox\n", None, "both"),
]
TEXT_PAIRS = [
    ("what color is the shape?\n", None, "red\n", None, "positive"),
    ("a man rides a bicycle along the river\n", None, "a bicycle\n", None, "positive"),
    ("handwritten digit seven\n", None, "seven\n", None, "positive"),
    ("the stock market rose\n", None, "investors welcomed the news\n", None, "positive"),
]
SORT_PAIRS = [  # sorting by query length regroups the chunks of 2: {0, 1}, {2, 3} → {1, 3}, {2, 0}; GIC
    # targets of unequal length make the per-chunk token means differ
    ("the stock market rose as investors welcomed the news from the central bank on Tuesday\n", None,
     "investors welcomed the news from the central bank\n", None, "positive"),
    ("a cat\n", None, "<image>\nRepresent the given image.\n", "b", "query"),
    ("<image>\nWhat shape?\n", "a", "a red circle\n", None, "positive"),
    ("digit nine\n", None, "nine\n", None, "none"),
]
RENDER_ROWS = [  # MMEB-train rows (subset, row) for their text rendering (row 9 of docs/parity.md)
    ("ImageNet_1K", {"qry": "<|image_1|> Represent the given image for classification  \n\n", "qry_image_path": "a.jpg",
                     "pos_text": "tench", "pos_image_path": "", "neg_text": "goldfish", "neg_image_path": ""}),
    ("WebQA", {"qry": "<|image_1|>\nFind a Wikipedia image that answers this question: Who?  ", "qry_image_path": "",
               "pos_text": "<|image_1|> Represent the given Wikipedia image with related text information: Tom",
               "pos_image_path": "b.jpg", "neg_text": "x", "neg_image_path": ""}),
    ("VisDial", {"qry": "Represent the given dialogue about an image, which is used for image retrieval: Q: what? "
                        "A: yes\n\n\n", "qry_image_path": "", "pos_text": "<|image_1|>Represent the given image.",
                 "pos_image_path": "c.jpg", "neg_text": " ", "neg_image_path": "d.jpg"}),
    ("ChartQA", {"qry": "<|image_1|>\r\nRepresent the given image with the following question: How many?",
                 "qry_image_path": "e.jpg", "pos_text": "42 \t ", "pos_image_path": "", "neg_text": "41  ",
                 "neg_image_path": ""}),
    ("CIRR", {"qry": "<|image_1|> Given an image, find a similar everyday image with the described changes: bigger",
              "qry_image_path": "f.jpg", "pos_text": "<|image_1|>\n\nRepresent the given image.\n",
              "pos_image_path": "g.jpg", "neg_text": "<|image_1|>", "neg_image_path": "h.jpg"}),
    ("VisualNews_t2i", {"qry": "Retrieve an image of this news caption. US troops  \n", "qry_image_path": "",
                        "pos_text": "<|image_1|> Represent the given image.", "pos_image_path": "i.jpg",
                        "neg_text": "", "neg_image_path": ""}),
]
CASES = {  # name: (pairs, GradCache chunk, LoRA, KV mode)
    "text": (TEXT_PAIRS, 4, False, "compressed"),
    "image": (IMAGE_PAIRS[:1] + TEXT_PAIRS[1:], 4, False, "compressed"),
    "both_sides": (IMAGE_PAIRS, 4, False, "compressed"),
    "gradcache_chunk2": (SORT_PAIRS, 2, False, "compressed"),
    "lora_dora_tokens": (IMAGE_PAIRS, 2, True, "compressed"),
    "kv_full": (IMAGE_PAIRS, 4, False, "full"),
}


class _Stub(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _Stub(f"{self.__name__}.{name}")
        setattr(self, name, sub)
        return sub

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Satisfies imports of the data-loading packages the authors' modules import at top level."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _tiny_tokenizer() -> Any:
    """The byte-level BPE of btoks.backbones.tiny (same vocabulary) as the Qwen2 tokenizer class their
    processor requires."""
    from tokenizers import Tokenizer
    from transformers import Qwen2TokenizerFast

    spec = importlib.util.spec_from_file_location("btoks_tiny", ROOT / "src" / "btoks" / "backbones" / "tiny.py")
    assert spec is not None and spec.loader is not None
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    return Qwen2TokenizerFast(tokenizer_object=Tokenizer.from_str(tiny._tokenizer_json()), eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", bos_token=None,
                              extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})


def _processor(tok: Any) -> Any:
    """A Qwen2-VL processor without a video processor (theirs needs torchvision; no case has video)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    proc = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
    proc.image_processor = Qwen2VLImageProcessor(patch_size=14, temporal_patch_size=2, merge_size=2,
                                                 min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 1280)
    proc.tokenizer, proc.video_processor, proc.chat_template = tok, None, None
    proc.image_token, proc.video_token = "<|image_pad|>", "<|video_pad|>"
    proc.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
    proc.video_token_id = tok.convert_tokens_to_ids("<|video_pad|>")
    return proc


def _images() -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return {"a": Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)),
            "b": Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8))}


def _token_ids(tok: Any) -> dict[str, int]:
    return {k: tok.convert_tokens_to_ids(t) for k, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}


def _save_tiny_backbone(tok: Any, directory: Path) -> None:
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": MROPE_SECTION}, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, bos_token_id=None)
    cfg = Qwen2VLConfig(text_config=text, vision_config=VISION, **_token_ids(tok))
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())  # exactly representable in float16: the fixture stores float16
    model.save_pretrained(directory)
    tok.save_pretrained(directory)


def _build(directory: Path, lora: bool, pooling: dict[str, Any] | None = None,
           base_model_dir: Path | None = None) -> tuple[Any, Any, Any]:
    """Their model (injector → Qwen2VLBackbone → BToksPooling → Normalize), set up with their processor
    wrapper; with ``lora`` their ``apply_peft`` (LoRA + DoRA + trainable BTok rows). ``base_model_dir``:
    save the reference-mode base model first, as their train.py does before PEFT."""
    import torch
    from vlm2emb.data.processors import Qwen2VLProcessorWrapper
    from vlm2emb.model import create_model
    from vlm2emb.training.train import apply_peft

    model = create_model({"type": "BToks", "modules": {
        "injector": {"type": "BToksTokenInjector", "num_tokens": 4},
        "backbone": {"type": "Qwen2VLBackbone", "model_name_or_path": str(directory), "dtype": "float32",
                     "attn_implementation": "eager", "trust_remote_code": False},
        "pooling": pooling or {"type": "BToksPooling"},
        "normalize": {"type": "Normalize"},
    }})
    tok = _tiny_tokenizer()
    processor = _processor(tok)
    model.setup(processor=processor)
    wrapper = Qwen2VLProcessorWrapper(processor)
    if base_model_dir is not None:
        model.save_pretrained(str(base_model_dir), save_base_weights=False)
        tok.save_pretrained(str(base_model_dir))
        processor.image_processor.save_pretrained(str(base_model_dir))
        model.__dict__["name_or_path"] = str(base_model_dir)
        model.config._name_or_path = str(base_model_dir)
    if lora:
        model = apply_peft(model, dict(LORA, type="lora", dropout=0.0,
                                       trainable_token_indices=model.get_trainable_token_indices()))
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a "trained" adapter: B ≠ 0, BTok rows moved, all float16-exact
            for name, p in model.named_parameters():
                if "lora_B" in name or "trainable_tokens_delta" in name:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.05)
                if "_modules_dict.pooling." in name:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.05)
                if "lora_" in name or "trainable_tokens" in name or "_modules_dict.pooling." in name:
                    p.copy_(p.half().float())  # the DoRA magnitude too: stored as float16, exactly
    return model, wrapper, tok


def _trainer(model: Any, wrapper: Any, chunk: int, kv_mode: str, out_dir: Path) -> Any:
    from vlm2emb.training.trainers.btoks_trainer import BToksTrainer, BToksTrainingArgs

    args = BToksTrainingArgs(output_dir=str(out_dir), per_device_train_batch_size=4, use_grad_cache=True,
                             gc_chunk_size=chunk, temperature=TEMPERATURE, generation_loss_weight=GEN_WEIGHT,
                             generation_loss_duration=2000, generation_kv_mode=kv_mode, use_cpu=True,
                             report_to="none", bf16=False, remove_unused_columns=False, seed=0)
    trainer = BToksTrainer(model=model, args=args, processing_class=wrapper)
    trainer.recorded = {}

    def log_metrics(contrastive_loss: Any, weighted_generation_loss: Any, generation_weight: float,
                    kv_cache_mode: Any = None) -> None:
        trainer.recorded = {"contrastive": float(contrastive_loss),
                            "generative": float(weighted_generation_loss or 0.0) / generation_weight,
                            "kv_cache_mode": kv_cache_mode}

    trainer._log_btoks_metrics = log_metrics
    return trainer


def _hf_name(name: str) -> str:
    """Their parameter name → the name inside the HF model btoks wraps."""
    for prefix in ("base_model.model._modules_dict.backbone.model.", "_modules_dict.backbone.model."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _run_case(name: str, directory: Path, images: dict[str, Any], out: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    pairs, chunk, lora, kv_mode = CASES[name]
    model, wrapper, tok = _build(directory, lora)

    def side(text: str, image: str | None) -> dict[str, Any]:
        return wrapper([text.replace("<image>", "<|image_pad|>")], [[images[image]] if image else None])[0]

    queries = [side(q, qi) for q, qi, _, _, _ in pairs]
    positives = [side(p, pi) for _, _, p, pi, _ in pairs]
    from vlm2emb.data.processors import batch_processor_outputs

    model.eval()
    with torch.no_grad():
        emb = {s: model(**batch_processor_outputs(b, wrapper))["embeddings"].tolist()
               for s, b in (("query", queries), ("positive", positives))}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(model, wrapper, chunk, kv_mode, Path(tmp))
        model.zero_grad()
        trainer.training_step(trainer.model, {"query": queries, "positive": positives,
                                              "metadata": {"ntp_side": [r[4] for r in pairs]}})
    grads = {_hf_name(n): p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    wanted = LORA_RECORDED if lora else RECORDED
    missing = [w for w in wanted if w not in grads and ".visual." not in f".{w}"]
    if missing:
        raise KeyError(f"case {name}: no gradient for {missing} (have e.g. {sorted(grads)[:5]})")
    selected = {w: grads[w].contiguous() for w in wanted if w in grads}
    btoks = tok.convert_tokens_to_ids([f"<|btok_{i}|>" for i in range(4)])
    if not lora:
        selected["btok_rows"] = grads["model.language_model.embed_tokens.weight"][btoks].contiguous()
        selected["lm_head_btok_rows"] = grads["lm_head.weight"][btoks].contiguous()
    save_file(selected, str(out / f"grads_{name}.safetensors"))
    if lora:
        adapter = {_hf_name(n): p.detach().half().contiguous() for n, p in model.named_parameters()
                   if "lora_" in n or "trainable_tokens" in n}
        save_file(adapter, str(out / "adapter.safetensors"))
    return {"pairs": [list(p) for p in pairs], "chunk": chunk, "lora": lora, "kv_mode": kv_mode,
            "embeddings": emb, **trainer.recorded,
            "input_ids": {s: [x["input_ids"][0].tolist() for x in b] for s, b in (("query", queries),
                                                                                 ("positive", positives))}}


POOLINGS = {"v1": {"type": "BToksPooling"},
            "v2": {"type": "BToksAttentionPooling", "hidden_dim": TEXT["hidden_size"], "mlp_ratio": 4.0,
                   "dropout": 0.1, "attention_scale": True}}


def _checkpoint(version: str, directory: Path, images: dict[str, Any], out: Path) -> dict[str, Any]:
    """A training run's output in the authors' layout (``base_model/`` + ``checkpoint-1/`` from their HF
    Trainer save, without the processor copy, optimizer or trainer state), reloaded by their evaluation loader (``_load_peft_checkpoint``: PEFT load + merge);
    records the embeddings of ``IMAGE_PAIRS``' queries. The backbone path in ``base_model/config.json`` is
    rewritten to ``tiny-qwen2vl`` (the test rebuilds that folder from ``model.safetensors``)."""
    import torch
    from vlm2emb.data.processors import batch_processor_outputs
    from vlm2emb.evaluation.evaluate import _load_peft_checkpoint

    run = out / f"authors_checkpoint_{version}"
    model, wrapper, _ = _build(directory, lora=True, pooling=POOLINGS[version], base_model_dir=run / "base_model")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(model, wrapper, 4, "compressed", Path(tmp))
        trainer.processing_class = None  # their processor save needs a video processor (torchvision)
        trainer._save(str(run / "checkpoint-1"))
    queries = [wrapper([q.replace("<image>", "<|image_pad|>")], [[images[qi]] if qi else None])[0]
               for q, qi, _, _, _ in IMAGE_PAIRS]
    loaded, _ = _load_peft_checkpoint(str(run / "checkpoint-1"), {}, _adapter_config(run / "checkpoint-1"))
    loaded.eval()
    with torch.no_grad():
        emb = loaded(**batch_processor_outputs(queries, wrapper))["embeddings"]
    for path in (run / "base_model" / "config.json", run / "checkpoint-1" / "adapter_config.json"):
        text = path.read_text().replace(str(directory), "tiny-qwen2vl").replace(str(run / "base_model"), "base_model")
        path.write_text(text)
    for junk in ("training_args.bin", "README.md"):
        (run / "checkpoint-1" / junk).unlink(missing_ok=True)
    return {"embeddings": emb.tolist(), "queries": [[q, qi] for q, qi, _, _, _ in IMAGE_PAIRS]}


def _adapter_config(path: Path) -> Any:
    from peft import PeftConfig

    return PeftConfig.from_pretrained(str(path))


def _renders() -> list[dict[str, Any]]:
    """Their MMEB-train parser's text per side (``<|image_pad|>`` as their image marker)."""
    from vlm2emb.data.datasets.mmeb_train import parse_mmeb_train_content

    out = []
    for subset, row in RENDER_ROWS:
        parsed = parse_mmeb_train_content(row, subset=subset)
        out.append({"subset": subset, "row": row,
                    "text": {side: parsed[side]["text"] for side in ("query", "positive", "negative")}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-src", required=True, help="the authors' checkout's src/ (has vlm2emb/)")
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "parity"))
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--authors-commit", default=None, help="recorded in cases.json")
    parser.add_argument("--renders-only", action="store_true", help="only update the rendering rows of cases.json")
    a = parser.parse_args()
    sys.meta_path.insert(0, _StubFinder())
    sys.path.insert(0, a.authors_src)
    import torch
    import transformers
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.renders_only:
        meta = json.loads((out / "cases.json").read_text())
        meta["renders"] = _renders()
        (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
        return
    images = _images()
    for key, im in images.items():
        im.save(out / f"image_{key}.png")
    with tempfile.TemporaryDirectory() as tmp:
        tok = _tiny_tokenizer()
        _save_tiny_backbone(tok, Path(tmp))
        base, _, tok = _build(Path(tmp), lora=False)
        weights = {_hf_name(n): p.detach().half().contiguous() for n, p in base.state_dict().items()}
        save_file(weights, str(out / "model.safetensors"))
        cases = {name: _run_case(name, Path(tmp), images, out) for name in a.cases}
        checkpoints = {v: _checkpoint(v, Path(tmp), images, out) for v in POOLINGS}
    meta = {"generated_by": "tools/parity_fixtures.py", "authors_commit": a.authors_commit,
            "transformers": transformers.__version__, "torch": torch.__version__,
            "text_config": TEXT, "mrope_section": MROPE_SECTION, "vision_config": VISION,
            "token_ids": _token_ids(tok), "btok_ids": tok.convert_tokens_to_ids([f"<|btok_{i}|>" for i in range(4)]),
            "gen_weight": GEN_WEIGHT, "temperature": TEMPERATURE, "lora": LORA, "cases": cases, "checkpoints": checkpoints,
            "renders": _renders()}
    (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out}")



if __name__ == "__main__":
    main()
