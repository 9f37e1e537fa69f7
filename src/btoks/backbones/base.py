"""The Backbone interface: what BToksModel needs from a (multimodal) decoder, and the shared implementation.

An adapter turns ``Sample``s into token ids plus model kwargs (pixel values, grids), computes position ids
(1-D for text LMs, M-RoPE for Qwen-VL) including where GIC targets start, pads model kwargs for a longer
sequence, and runs the base decoder with an arbitrary mask and KV cache. Families differ only in how media
become tokens and positions; everything else lives here, so adding a family touches only ``backbones/``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from btoks.data.sample import IMAGE_TOKEN, VIDEO_TOKEN, Sample

_MEDIA_SPLIT = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(VIDEO_TOKEN)})")
TEXT, IMAGE, VIDEO = 0, 1, 2


@dataclass
class Segment:
    """A run of token ids of one kind (text, image or video placeholders)."""

    ids: list[int]
    kind: int = TEXT


@dataclass
class ModelInputs:
    """A left-padded batch: the last column of every row is its last real token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    media: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> ModelInputs:
        return ModelInputs(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.media.items()},
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class TokenRow:
    """One tokenised sample before padding: ids, their kinds (text / image / video) and its model kwargs."""

    ids: list[int]
    kinds: list[int]
    media: dict[str, torch.Tensor] = field(default_factory=dict)


GicStart = str
"""Where GIC target positions start: ``count`` (number of valid ``[X|B]`` tokens, the authors' rule) or
``continue`` (last ``[X|B]`` position + 1; differs from ``count`` after M-RoPE images)."""


class Backbone(ABC):
    """Shared adapter logic; subclasses set ``family``, implement ``matches``/``load`` and override the media
    hooks."""

    family: ClassVar[str] = "base"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token

    # ---- registry hooks -------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def matches(cls, config: Any) -> bool:
        """Whether this adapter handles a HF config (the registry asks each adapter in turn)."""

    @classmethod
    @abstractmethod
    def load(cls, name_or_path: str, **kwargs: Any) -> Backbone:
        """Load model, tokenizer and processors by hub name or local path."""

    # ---- model parts ----------------------------------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        """The decoder without its LM head (returns hidden states)."""
        return self.model.get_decoder() if not hasattr(self.model, "model") else self.model.model

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def lora_target_modules(self) -> list[str] | str:
        """Which linear layers LoRA wraps: the LLM projections."""
        return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    @property
    def embedding_module_name(self) -> str:
        return "embed_tokens"

    @property
    def modules_to_save(self) -> list[str]:
        """Non-LoRA modules trained in full and saved with the adapter (e.g. a freshly initialised projector)."""
        return []

    @property
    def vision_token_ids(self) -> frozenset[int]:
        """Placeholder ids that carry image/video features (for analysis: text vs vision attention)."""
        return frozenset()

    @property
    def non_text_token_ids(self) -> frozenset[int]:
        """Ids a GIC target never scores: vision placeholders and their wrapping tokens."""
        return self.vision_token_ids

    @property
    def eos_token_id(self) -> int | None:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
        return eos[0] if isinstance(eos, list | tuple) else eos

    # ---- media hooks (override in multimodal families) -------------------------------------------------------
    def set_pixel_budget(self, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """Bound the pixels an image is resized to (dynamic-resolution families); fixed-resolution and
        text-only backbones have no budget to set, so this default does nothing."""
        return None

    def image_segments(self, images: list[Image.Image]) -> tuple[list[list[Segment]], dict[str, torch.Tensor]]:
        """Token segments per image (placeholders plus any wrapping tokens) and the model kwargs they need."""
        raise ValueError(f"{self.family} backbone '{self.model.config.model_type}' cannot take images")

    def video_segments(self, frames: list[Image.Image]) -> tuple[list[Segment], dict[str, torch.Tensor]]:
        """Token segments for one video given as sampled frames, and the model kwargs they need."""
        raise ValueError(f"{self.family} backbone '{self.model.config.model_type}' cannot take video")

    def precompute_media(self, media: dict[str, Any]) -> dict[str, Any]:
        """Media kwargs with a *frozen* media encoder's outputs in place of raw pixels, for reuse.

        GradCache runs every chunk twice (pass 1 without a graph, pass 2 with one); a frozen vision tower
        gives the same features both times, so pass 1 computes them once and pass 2 reuses them (at Qwen2-VL-2B's
        shape the tower is ~60 % of a step's FLOPs). Return ``media`` unchanged when the encoder has trainable
        parameters or the family has no such input; this default does not reuse anything.
        """
        return media

    def merge_media(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Concatenate per-sample media kwargs along dim 0 (patch rows, grids)."""
        keys = sorted({k for p in parts for k in p})
        return {k: torch.cat([p[k] for p in parts if k in p]) for k in keys}

    def compute_position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             kinds: torch.Tensor, media: dict[str, torch.Tensor]) -> torch.Tensor:
        """1-D positions over the valid tokens (either padding side); M-RoPE families override."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @property
    def max_image_pixels(self) -> int:
        """Pixels an image is resized to at most (decoding more only costs memory)."""
        return 28 * 28 * 1280

    def image_token_estimate(self, width: float, height: float) -> int:
        """Rough token count of one image at this size, for length bucketing before decoding. The default
        is the Qwen-VL dynamic-resolution rule with its usual sizes; fixed-resolution families override."""
        pixels = min(max(width * height, 56 * 56), 28 * 28 * 1280)
        return int(pixels // (14 * 14 * 2 * 2)) + 2

    # ---- GIC targets -------------------------------------------------------------------------------------------
    def target_position_ids(self, inputs: ModelInputs, rows: torch.Tensor, relative: torch.Tensor,
                            start: GicStart = "count") -> torch.Tensor:
        """Absolute positions of GIC targets continuing ``inputs`` rows ``rows``: ``relative`` (the targets'
        own positions from 0, 1-D ``(n, T)`` or M-RoPE ``(3, n, T)``) shifted by where targets start."""
        if start == "count":
            offset = inputs.attention_mask.index_select(0, rows).sum(-1)
        elif start == "continue":
            last = inputs.position_ids.index_select(-2, rows)[..., -1]
            offset = (last.amax(0) if last.dim() == 2 else last) + 1
        else:
            raise ValueError(f"gic_positions must be 'count' or 'continue', got {start!r}")
        if relative.dim() == 3:
            if inputs.position_ids.dim() != 3:
                raise ValueError("M-RoPE target positions for a backbone with 1-D positions")
            return relative + offset.view(1, -1, 1)
        if inputs.position_ids.dim() == 3:
            relative = relative[None].expand(inputs.position_ids.shape[0], -1, -1)
            return relative + offset.view(1, -1, 1)
        return relative + offset[:, None]

    def extend_media(self, media: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
        """Model kwargs of an ``[X|B]`` batch for a sequence ``width`` text columns longer (``[X|B|T]``);
        per-token kwargs (e.g. Qwen's ``mm_token_type_ids``) get text padding."""
        return media

    def join_media(self, inputs: ModelInputs, target_media: dict[str, torch.Tensor], rows: torch.Tensor,
                   width: int) -> dict[str, torch.Tensor]:
        """Model kwargs of one ``[X|B|T]`` pass: those of ``inputs`` plus ``target_media`` of the targets of
        ``rows`` (``width`` columns each). Text-only targets just extend the inputs' kwargs; families whose
        targets can carry pixels override this to interleave them per row."""
        if target_media:
            raise ValueError(f"{self.family} backbone: the explicit [X|B|T] pass takes text-only GIC targets "
                             "(use gic_impl='cache' without gradient checkpointing, or gic_target='text')")
        return self.extend_media(inputs.media, width)

    # ---- building inputs -------------------------------------------------------------------------------------
    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def sample_segments(self, sample: Sample) -> tuple[list[Segment], dict[str, torch.Tensor]]:
        """Split the prompt at media markers; media without a marker go first (VLM2Vec convention)."""
        prompt = sample.prompt
        images = list(sample.images)
        n_image_markers = prompt.count(IMAGE_TOKEN)
        if n_image_markers > len(images):
            raise ValueError(f"sample {sample.id!r}: {n_image_markers} {IMAGE_TOKEN} markers but "
                             f"{len(images)} images")
        if sample.video is not None and VIDEO_TOKEN not in prompt:
            prompt = VIDEO_TOKEN + prompt
        if len(images) > n_image_markers:
            prompt = IMAGE_TOKEN * (len(images) - n_image_markers) + prompt
        image_segs, media = self.image_segments(images) if images else ([], {})
        parts: list[dict[str, torch.Tensor]] = [media] if media else []
        segments: list[Segment] = []
        image_iter = iter(image_segs)
        for piece in _MEDIA_SPLIT.split(prompt):
            if piece == IMAGE_TOKEN:
                segments.extend(next(image_iter))
            elif piece == VIDEO_TOKEN:
                if not sample.video:
                    raise ValueError(f"sample {sample.id!r}: {VIDEO_TOKEN} marker but no video frames")
                video_segs, video_media = self.video_segments(sample.video)
                segments.extend(video_segs)
                parts.append(video_media)
            elif piece:
                segments.append(Segment(self.text_ids(piece)))
        return segments, self.merge_media(parts) if parts else {}

    def tokenize(self, sample: Sample, suffix_ids: list[int], max_length: int) -> TokenRow:
        """Token ids of one sample plus ``suffix_ids`` (the BToks); text is cut from its end when the row
        exceeds ``max_length``, media tokens and the suffix never are."""
        segments, media = self.sample_segments(sample)
        if not any(s.ids for s in segments):
            raise ValueError(f"sample {sample.id!r} is empty (no text and no media)")
        excess = sum(len(s.ids) for s in segments) + len(suffix_ids) - max_length
        for seg in reversed(segments):
            if excess <= 0:
                break
            if seg.kind == TEXT:
                cut = min(excess, len(seg.ids))
                seg.ids = seg.ids[: len(seg.ids) - cut]
                excess -= cut
        if excess > 0:
            raise ValueError(f"sample {sample.id!r}: media tokens alone exceed max_length={max_length}")
        ids = [i for s in segments for i in s.ids] + list(suffix_ids)
        kinds = [s.kind for s in segments for _ in s.ids] + [TEXT] * len(suffix_ids)
        return TokenRow(ids, kinds, media)

    def collate(self, rows: list[TokenRow], left_pad: bool = True) -> tuple[ModelInputs, torch.Tensor]:
        """Pad tokenised rows into a batch (left: the last column is every row's last token; right: GIC
        targets) and compute positions; returns the inputs and the per-token kinds."""
        width = max(len(r.ids) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        kinds = torch.zeros((len(rows), width), dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            cols = slice(width - len(row.ids), width) if left_pad else slice(0, len(row.ids))
            input_ids[r, cols] = torch.tensor(row.ids, dtype=torch.long)
            kinds[r, cols] = torch.tensor(row.kinds, dtype=torch.long)
            attention_mask[r, cols] = 1
        parts = [r.media for r in rows if r.media]
        media = self.merge_media(parts) if parts else {}
        position_ids = self.compute_position_ids(input_ids, attention_mask, kinds, media)
        return ModelInputs(input_ids, attention_mask, position_ids, self.media_kwargs(media, kinds)), kinds

    def build_inputs(self, samples: list[Sample], suffix_ids: list[int], max_length: int) -> ModelInputs:
        """Tokenise samples, append ``suffix_ids`` (the BToks) to each, left-pad, compute positions."""
        return self.collate([self.tokenize(s, suffix_ids, max_length) for s in samples])[0]

    def media_kwargs(self, media: dict[str, torch.Tensor], kinds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra kwargs the base model's forward needs (e.g. ``mm_token_type_ids``)."""
        return media

    # ---- running ---------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        media: dict[str, torch.Tensor] | None = None,
        cache: Any = None,
        use_cache: bool = False,
        output_attentions: bool = False,
    ) -> Any:
        """Run the decoder (no LM head) with explicit positions; ``attention_mask`` may be 2-D or a 4-D mask.
        The KV cache goes in as ``cache`` and comes back as ``.cache`` (transformers' current names)."""
        kwargs: dict[str, Any] = dict(media or {})
        if output_attentions:
            kwargs["output_attentions"] = True
        return self.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )

    # ---- saving ----------------------------------------------------------------------------------------------
    def save_processors(self, directory: str) -> None:
        self.tokenizer.save_pretrained(directory)
