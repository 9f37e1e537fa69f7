"""``btoks-mini``: a small LLaVA-style MLLM composed from offline pretrained parts.

SmolLM2-135M-Instruct (decoder) + EfficientNet-Lite0 (frozen vision tower) joined by a two-layer projector.
Each image becomes ``<|vision_start|>`` + ``grid²`` image tokens + ``<|vision_end|>``: the 7×7 EfficientNet map
is average-pooled to ``grid × grid`` cells and projected into the decoder's embedding space, where the features
replace the placeholder embeddings. A video is a few uniformly sampled frames, each encoded like an image and
wrapped in one start/end pair; a document page is an image. Positions are ordinary 1-D positions.

The model is a regular ``PreTrainedModel`` registered with the Auto classes, so ``save_pretrained`` /
``from_pretrained`` / peft work unchanged, and it plugs into btoks through :class:`MiniBackbone` like any other
family. ``btoks-mini`` applies the shipped heal + align delta (:mod:`btoks.backbones.mini_heal`): the projector
aligned on captions and the cut decoder healed into a language model again; ``btoks-mini-raw`` is the bare cut
with a random projector. With LoRA the projector is saved in full as a ``modules_to_save`` module.

To fit a 2-core CPU budget the decoder keeps ``DEFAULT_LAYERS`` of its 30 layers: the first ones plus the last
two, which map hidden states back into the vocabulary space (on three held-out sentences the token CE is 12.6
with this choice vs 21.0 keeping the first 12 and 3.0 for all 30; docs/results.md says what it costs).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from PIL import Image
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    LlamaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import CausalLMOutputWithPast

from btoks.backbones.base import IMAGE, VIDEO, Backbone, Segment
from btoks.backbones.mini_parts import (
    EfficientNetFeatures,
    efficientnet_state_dict,
    preprocess_images,
    smollm2_path,
)

MINI_NAME = "btoks-mini"
MINI_VARIANTS: dict[str, dict[str, Any]] = {
    MINI_NAME: {"delta": "shipped", "delta_parts": ("projector", "lora")},
    "btoks-mini-aligned": {"delta": "shipped", "delta_parts": ("projector",)},
    "btoks-mini-raw": {"delta": None},
}
"""Names ``load_backbone`` resolves to a composition. ``btoks-mini`` is the working small VLM: the shipped heal +
align delta (aligned projector, LLaVA stage 1, and a healed decoder whose held-out caption CE is 0.4-1.5
nats/token instead of ~16) applied to the cut decoder. ``btoks-mini-aligned`` takes only the projector from it;
``btoks-mini-raw`` is the bare cut (random projector), the start ``tools/heal_mini.py`` heals."""
DEFAULT_LAYERS = 10
DEFAULT_IMAGE_SIZE = 160
DEFAULT_GRID = 3
DEFAULT_VIDEO_FRAMES = 3
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
SHIPPED_DELTA = Path(__file__).with_name("mini_delta.safetensors")


@strict
class BToksMiniConfig(PreTrainedConfig):
    """A decoder ``text_config`` plus the vision-token layout."""

    model_type = "btoks_mini"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    vision_channels: int = 1280
    image_size: int = DEFAULT_IMAGE_SIZE
    image_grid: int = DEFAULT_GRID
    max_video_frames: int = DEFAULT_VIDEO_FRAMES
    image_token_id: int = -1
    video_token_id: int = -1
    vision_start_token_id: int = -1
    vision_end_token_id: int = -1
    freeze_vision: bool = True
    tie_word_embeddings: bool = True


class BToksMiniPreTrainedModel(PreTrainedModel):
    config: BToksMiniConfig
    config_class = BToksMiniConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules: ClassVar[list[str]] = ["LlamaDecoderLayer"]


class FeatureCache:
    """LRU of frozen-tower features keyed by a digest of each image's pixels, bounded in bytes.

    On CPU the frozen EfficientNet is most of a ``btoks-mini`` step (a batch of 16 three-frame videos: ~1.2 s
    of a 1.4 s forward), and the same images come back every epoch, in both quickstart arms and in
    evaluation. Hashing a 160 px image costs well under a millisecond.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._items: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    @staticmethod
    def key(pixels: torch.Tensor) -> bytes:
        data = pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return hashlib.blake2b(data, digest_size=16).digest()

    def get(self, key: bytes) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


class VisionTower(EfficientNetFeatures):
    """EfficientNet-Lite0 features pooled to ``grid × grid`` cells: ``(N, 3, S, S) -> (N, grid², 1280)``.

    Kept in eval mode (BatchNorm statistics are pretrained and batches here are tiny). While frozen (called
    without grad) it answers repeated images from a :class:`FeatureCache` (``FEATURE_CACHE_BYTES``; 0 turns it
    off) shared by every tower in the process, so a second arm or an evaluation reuses the first one's work.
    """

    FEATURE_CACHE_BYTES = 512 * 2**20
    _cache: ClassVar[FeatureCache | None] = None

    def __init__(self, grid: int) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        super().__init__(EfficientNet.from_name("efficientnet-lite0"))
        self.grid = grid

    def train(self, mode: bool = True) -> VisionTower:
        return super().train(False)

    def _weights_key(self) -> bytes:
        """Digest of the weights, recomputed only when an in-place change (a load, a training step) bumps a
        parameter's version counter: towers with the same weights share features, others never do."""
        versions = tuple(p._version for p in self.parameters())
        cached = getattr(self, "_weights_digest", None)
        if cached is None or cached[0] != versions:
            h = hashlib.blake2b(digest_size=16)
            for p in self.parameters():
                h.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
            cached = self._weights_digest = (versions, h.digest())
        return cached[1]

    def _compute(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = F.adaptive_avg_pool2d(super().forward(pixel_values), self.grid)
        return feats.flatten(2).transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or self.FEATURE_CACHE_BYTES <= 0 or len(pixel_values) == 0:
            return self._compute(pixel_values)
        cache = VisionTower._cache
        if cache is None or cache.max_bytes != self.FEATURE_CACHE_BYTES:
            cache = VisionTower._cache = FeatureCache(self.FEATURE_CACHE_BYTES)
        prefix = self._weights_key() + f":{self.grid}:{pixel_values.dtype}".encode()
        keys = [prefix + FeatureCache.key(p) for p in pixel_values]
        found = [cache.get(k) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        cache.hits += len(keys) - len(todo)
        cache.misses += len(todo)
        if todo:
            fresh = self._compute(pixel_values[todo])
            for i, f in zip(todo, fresh, strict=True):
                found[i] = f.clone()
                cache.put(keys[i], found[i])
        return torch.stack(found).to(pixel_values.device)


class BToksMiniModel(BToksMiniPreTrainedModel):
    """Vision tower + projector + decoder (no LM head): returns the decoder's hidden states."""

    def __init__(self, config: BToksMiniConfig) -> None:
        super().__init__(config)
        hidden = config.text_config.hidden_size
        self.vision_tower = VisionTower(config.image_grid)
        self.projector = nn.Sequential(
            nn.LayerNorm(config.vision_channels), nn.Linear(config.vision_channels, hidden), nn.GELU(),
            nn.Linear(hidden, hidden),
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` -> ``(N, grid², hidden)`` image tokens."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision):
            feats = self.vision_tower(pixel_values)
        return self.projector(feats)

    def _merge(self, input_ids: torch.Tensor, embeds: torch.Tensor, pixel_values: torch.Tensor | None,
               token_id: int) -> torch.Tensor:
        if pixel_values is None:
            return embeds
        feats = self.image_features(pixel_values.to(embeds.dtype)).to(embeds.dtype)
        slots = input_ids == token_id
        if int(slots.sum()) != feats.shape[0] * feats.shape[1]:
            raise ValueError(f"{int(slots.sum())} vision placeholders but {feats.shape[0]} frames × "
                             f"{feats.shape[1]} tokens of features")
        return embeds.masked_scatter(slots.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Any = None, past_key_values: Any = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                pixel_values: torch.Tensor | None = None, video_pixel_values: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        """``past_key_values`` is accepted as the older name of ``cache`` (passed on as ``cache``, so the
        decoder does not warn on every call)."""
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            inputs_embeds = self._merge(input_ids, inputs_embeds, pixel_values, self.config.image_token_id)
            inputs_embeds = self._merge(input_ids, inputs_embeds, video_pixel_values, self.config.video_token_id)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids,
                                   cache=cache if cache is not None else past_key_values,
                                   use_cache=use_cache, **kwargs)


class BToksMiniForCausalLM(BToksMiniPreTrainedModel, GenerationMixin):
    """``BToksMiniModel`` plus the (tied) LM head."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: BToksMiniConfig) -> None:
        super().__init__(config)
        self.model = BToksMiniModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_decoder(self) -> nn.Module:
        return self.model

    def forward(self, input_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                logits_to_keep: int = 0, **kwargs: Any) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, **kwargs)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.text_config.vocab_size)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache,
                                      hidden_states=out.hidden_states, attentions=out.attentions)


AutoConfig.register(BToksMiniConfig.model_type, BToksMiniConfig)
AutoModel.register(BToksMiniConfig, BToksMiniModel)
AutoModelForCausalLM.register(BToksMiniConfig, BToksMiniForCausalLM)


class MiniBackbone(Backbone):
    """Adapter for ``btoks-mini``: placeholder runs for images/frames, EfficientNet pixels, 1-D positions."""

    family = "btoks_mini"

    def __init__(self, model: BToksMiniForCausalLM, tokenizer: Any) -> None:
        super().__init__(model, tokenizer)
        self.cfg = model.config

    @classmethod
    def matches(cls, config: Any) -> bool:
        return getattr(config, "model_type", None) == BToksMiniConfig.model_type

    @classmethod
    def load(cls, name_or_path: str, *, dtype: Any = None, attn_implementation: str | None = "sdpa",
             trust_remote_code: bool = False, **kwargs: Any) -> MiniBackbone:
        model = BToksMiniForCausalLM.from_pretrained(name_or_path, dtype=dtype,
                                                     attn_implementation=attn_implementation, **kwargs)
        return cls(model, AutoTokenizer.from_pretrained(name_or_path))

    @property
    def base_model(self) -> nn.Module:
        return self.model.model

    @property
    def modules_to_save(self) -> list[str]:
        return ["projector"]

    @property
    def vision_token_ids(self) -> frozenset[int]:
        return frozenset({self.cfg.image_token_id, self.cfg.video_token_id})

    def image_token_estimate(self, width: float, height: float) -> int:
        return self.cfg.image_grid ** 2 + 2  # fixed resolution

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return preprocess_images(images, self.cfg.image_size)

    def _wrapped(self, token_id: int, frames: int, kind: int) -> Segment:
        ids = [token_id] * (frames * self.cfg.image_grid ** 2)
        return Segment([self.cfg.vision_start_token_id, *ids, self.cfg.vision_end_token_id], kind)

    def image_segments(self, images: list[Image.Image]) -> tuple[list[list[Segment]], dict[str, torch.Tensor]]:
        segs = [[self._wrapped(self.cfg.image_token_id, 1, IMAGE)] for _ in images]
        return segs, {"pixel_values": self._pixels(images)}

    def video_segments(self, frames: list[Image.Image]) -> tuple[list[Segment], dict[str, torch.Tensor]]:
        n = min(len(frames), self.cfg.max_video_frames)
        picked = [frames[round(i * (len(frames) - 1) / max(n - 1, 1))] for i in range(n)]
        return [self._wrapped(self.cfg.video_token_id, n, VIDEO)], {"video_pixel_values": self._pixels(picked)}

    def save_processors(self, directory: str) -> None:
        self.tokenizer.save_pretrained(directory)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" bar for a local 135M checkpoint (the quickstart loads it once per stage)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_mini(*, cache_dir: str | None = None, num_layers: int = DEFAULT_LAYERS, image_size: int = DEFAULT_IMAGE_SIZE,
              image_grid: int = DEFAULT_GRID, max_video_frames: int = DEFAULT_VIDEO_FRAMES, dtype: Any = None,
              attn_implementation: str | None = "sdpa", seed: int = 0, delta: str | Path | None = None,
              delta_parts: tuple[str, ...] = ("projector", "lora"), **_: Any) -> MiniBackbone:
    """Compose ``btoks-mini`` from the offline SmolLM2 and EfficientNet weights, then apply the heal + align
    ``delta`` (projector + merged decoder LoRA, see :mod:`btoks.backbones.mini_heal`).

    ``delta="shipped"`` uses the delta packaged with btoks (when it matches ``num_layers``), a path uses that
    file, ``None`` gives the raw composition (random projector, un-healed decoder); ``delta_parts`` picks
    the projector and/or the decoder LoRA from it. The result is deterministic
    for given arguments, so an adapter saved on top of it reloads exactly. The new special tokens' embedding
    rows start at the mean embedding (the image/video rows are overwritten by features anyway).
    """
    text_dir = smollm2_path(cache_dir)
    with _quiet_loading():
        text = LlamaForCausalLM.from_pretrained(text_dir, dtype=torch.float32)
    if not 1 <= num_layers <= text.config.num_hidden_layers:
        raise ValueError(f"num_layers must be in 1..{text.config.num_hidden_layers}, got {num_layers}")
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.add_tokens([IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END], special_tokens=True)
    ids = dict(zip(("image", "video", "start", "end"),
                   tokenizer.convert_tokens_to_ids([IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END]), strict=True))
    text_config = text.config.to_dict()
    text_config.update(num_hidden_layers=num_layers, vocab_size=len(tokenizer))
    text_config.pop("architectures", None)
    config = BToksMiniConfig(
        text_config=text_config, image_size=image_size, image_grid=image_grid, max_video_frames=max_video_frames,
        image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["start"],
        vision_end_token_id=ids["end"], bos_token_id=text.config.bos_token_id, eos_token_id=text.config.eos_token_id,
        pad_token_id=text.config.pad_token_id,
    )
    config.architectures = [BToksMiniForCausalLM.__name__]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BToksMiniForCausalLM._from_config(config, dtype=torch.float32,
                                                  attn_implementation=attn_implementation)
    total = text.config.num_hidden_layers
    kept = list(range(num_layers - 2)) + list(range(total - 2, total)) if num_layers >= 4 else list(range(num_layers))
    renumber = {old: new for new, old in enumerate(kept)}
    state = {}
    for key, value in text.model.state_dict().items():
        if key.startswith("layers."):
            _, idx, rest = key.split(".", 2)
            if int(idx) not in renumber:
                continue
            key = f"layers.{renumber[int(idx)]}.{rest}"
        state[key] = value
    old = state["embed_tokens.weight"]
    state["embed_tokens.weight"] = torch.cat([old, old.mean(0, keepdim=True).expand(len(tokenizer) - len(old), -1)])
    model.model.language_model.load_state_dict(state, strict=True)
    model.model.vision_tower.net.load_state_dict(efficientnet_state_dict(), strict=True)
    model.tie_weights()
    model.generation_config = text.generation_config
    backbone = MiniBackbone(model.eval(), tokenizer)
    if delta == "shipped":
        delta = SHIPPED_DELTA if num_layers == DEFAULT_LAYERS and SHIPPED_DELTA.is_file() else None
    if delta is not None:
        from btoks.backbones.mini_heal import apply_delta

        apply_delta(backbone, delta, parts=delta_parts)
    if dtype is not None:
        model.to(dtype)
    return backbone


__all__ = ["MINI_NAME", "MINI_VARIANTS", "BToksMiniConfig", "BToksMiniForCausalLM", "BToksMiniModel", "MiniBackbone", "load_mini"]
