"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: images, multiple images and video frames, M-RoPE positions.

Inputs are built token by token (``<|vision_start|>`` + N placeholders + ``<|vision_end|>``) instead of through
the HF processor, because BToks must be appended after the placeholders are expanded and because the HF video
processor needs torchvision. Pixels go through the family's HF image processor (PIL backend); a video's frames
are patchified pairwise into the ``temporal_patch_size`` layout the vision tower expects.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from btoks.backbones.base import IMAGE, VIDEO, Backbone, ModelInputs, Segment

_FAMILIES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"}

def _image_processor_from_config(vision_config: Any) -> Any:
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=vision_config.patch_size,
        temporal_patch_size=vision_config.temporal_patch_size,
        merge_size=vision_config.spatial_merge_size,
    )

class QwenVLBackbone(Backbone):
    """One adapter for the Qwen-VL generations; they differ only in how a video is split into groups."""

    family = "qwen_vl"

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any = None) -> None:
        super().__init__(model, tokenizer)
        cfg = model.config
        self.image_processor = image_processor or _image_processor_from_config(cfg.vision_config)
        self.merge = cfg.vision_config.spatial_merge_size
        self.temporal = cfg.vision_config.temporal_patch_size
        self.image_token_id = cfg.image_token_id
        self.video_token_id = cfg.video_token_id
        self.vision_start_id = cfg.vision_start_token_id
        self.vision_end_id = cfg.vision_end_token_id
        self.split_video_frames = cfg.model_type == "qwen3_vl"  # Qwen3-VL separates temporal groups

    @classmethod
    def matches(cls, config: Any) -> bool:
        return getattr(config, "model_type", None) in _FAMILIES

    @classmethod
    def load(cls, name_or_path: str, *, dtype: Any = None, trust_remote_code: bool = False,
             attn_implementation: str | None = "sdpa", min_pixels: int | None = None,
             max_pixels: int | None = None, **kwargs: Any) -> QwenVLBackbone:
        model = AutoModelForImageTextToText.from_pretrained(
            name_or_path, dtype=dtype, trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation, **kwargs,
        )
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        try:
            image_processor = AutoImageProcessor.from_pretrained(name_or_path, backend="pil")
        except (OSError, ValueError):
            image_processor = None
        backbone = cls(model, tokenizer, image_processor)
        backbone.set_pixel_budget(min_pixels, max_pixels)
        return backbone

    def set_pixel_budget(self, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """Bound image sizes (the paper: max 28·28·1280 for images); applies to later calls."""
        size = dict(getattr(self.image_processor, "size", None) or {})
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        if size:
            self.image_processor.size = size

    @property
    def vision_token_ids(self) -> frozenset[int]:
        return frozenset({self.image_token_id, self.video_token_id})

    @property
    def non_text_token_ids(self) -> frozenset[int]:
        return frozenset({self.image_token_id, self.video_token_id, self.vision_start_id, self.vision_end_id})

    @property
    def max_image_pixels(self) -> int:
        size = dict(getattr(self.image_processor, "size", None) or {})
        return int(size.get("longest_edge", 28 * 28 * 1280))

    def image_token_estimate(self, width: float, height: float) -> int:
        """Placeholder count after the processor's resize (pixel budget) plus the start/end pair."""
        size = dict(getattr(self.image_processor, "size", None) or {})
        patch = getattr(self.image_processor, "patch_size", None) or 14
        lo = int(size.get("shortest_edge", 56 * 56))
        return int(min(max(width * height, lo), self.max_image_pixels) // (patch * patch * self.merge**2)) + 2

    def extend_media(self, media: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
        return {k: (F.pad(v, (0, width)) if k == "mm_token_type_ids" else v) for k, v in media.items()}

    def join_media(self, inputs: ModelInputs, target_media: dict[str, torch.Tensor], rows: torch.Tensor,
                   width: int) -> dict[str, torch.Tensor]:
        """Images of ``[X|B]`` and of the targets, reordered row by row (the model consumes pixels in token
        order: row 0's input images, row 0's target images, row 1's ...). Video targets are not supported."""
        media = inputs.media
        if not target_media:
            return self.extend_media(media, width)
        if {"pixel_values_videos", "mm_encoder_outputs"} & (set(target_media) | set(media)):
            raise ValueError("the explicit [X|B|T] pass takes image GIC targets only with raw image pixels "
                             "(no video, no reused vision features): use gic_impl='cache' without gradient "
                             "checkpointing")
        n = len(inputs)
        x_kinds = media.get("mm_token_type_ids")
        x_images = self._images_per_row(media, x_kinds) if x_kinds is not None else [[] for _ in range(n)]
        t_kinds = torch.zeros((n, width), dtype=target_media["mm_token_type_ids"].dtype,
                              device=target_media["mm_token_type_ids"].device)
        t_kinds[rows] = target_media["mm_token_type_ids"]
        t_images: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(n)]
        for r, imgs in zip(rows.tolist(), self._images_per_row(target_media, target_media["mm_token_type_ids"]),
                           strict=True):
            t_images[r] = imgs
        ordered = [img for r in range(n) for img in x_images[r] + t_images[r]]
        if x_kinds is None:
            x_kinds = torch.zeros(inputs.input_ids.shape, dtype=t_kinds.dtype, device=t_kinds.device)
        return {"pixel_values": torch.cat([p for p, _ in ordered]), "image_grid_thw": torch.stack([g for _, g in ordered]),
                "mm_token_type_ids": torch.cat([x_kinds, t_kinds], dim=1)}

    @staticmethod
    def _images_per_row(media: dict[str, torch.Tensor],
                        kinds: torch.Tensor) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """(patch rows, grid) of every image, grouped by batch row (an image is one run of image tokens)."""
        img = kinds == IMAGE
        starts = (img & ~F.pad(img, (1, 0))[:, :-1]).sum(-1).tolist()
        grids = media.get("image_grid_thw")
        if grids is None:
            return [[] for _ in starts]
        patches = iter(zip(media["pixel_values"].split(grids.prod(-1).tolist()), grids, strict=True))
        return [[next(patches) for _ in range(k)] for k in starts]

    @property
    def lora_target_modules(self) -> str:
        # Only the LLM's projections: the vision tower has its own q/k/v-like layers that LoRA should not touch.
        return r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

    @property
    def base_model(self) -> Any:
        return self.model.model

    def precompute_media(self, media: dict[str, Any]) -> dict[str, Any]:
        """Vision-tower outputs as ``mm_encoder_outputs`` (what HF's Qwen-VL forward accepts instead of pixels;
        Qwen3-VL's deepstack features ride along), when the tower is frozen."""
        base = self.model.model
        pixel_keys = {"pixel_values": ("image", "image_grid_thw", base.get_image_features),
                      "pixel_values_videos": ("video", "video_grid_thw", base.get_video_features)}
        if not any(k in media for k in pixel_keys) or any(p.requires_grad for p in base.visual.parameters()):
            return media
        out = {k: v for k, v in media.items() if k not in pixel_keys}
        encoded = dict(out.get("mm_encoder_outputs") or {})
        with torch.no_grad():
            for key, (kind, grid, encode) in pixel_keys.items():
                if key in media:
                    encoded[kind] = encode(media[key], media[grid], return_dict=True)
        out["mm_encoder_outputs"] = encoded
        return out

    def _patchify(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.image_processor(images=images, return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    def _wrap(self, n_tokens: int, kind: int, token_id: int) -> list[Segment]:
        return [Segment([self.vision_start_id]), Segment([token_id] * n_tokens, kind), Segment([self.vision_end_id])]

    def image_segments(self, images: list[Image.Image]) -> tuple[list[list[Segment]], dict[str, torch.Tensor]]:
        pixels, grids = self._patchify(images)
        segs = [self._wrap(int(g.prod()) // self.merge**2, IMAGE, self.image_token_id) for g in grids]
        return segs, {"pixel_values": pixels, "image_grid_thw": grids}

    def video_segments(self, frames: list[Image.Image]) -> tuple[list[Segment], dict[str, torch.Tensor]]:
        """Frames → ``pixel_values_videos``: each temporal group takes slot ``i`` from the group's i-th frame."""
        size = frames[0].size
        frames = [f.convert("RGB").resize(size) if f.size != size else f.convert("RGB") for f in frames]
        while len(frames) % self.temporal:
            frames.append(frames[-1])
        pixels, grids = self._patchify(frames)
        n_rows = int(grids[0].prod())
        per_frame = pixels.view(len(frames), n_rows, 3, self.temporal, -1)
        groups = []
        for g in range(len(frames) // self.temporal):
            block = per_frame[g * self.temporal].clone()
            for slot in range(1, self.temporal):
                block[:, :, slot] = per_frame[g * self.temporal + slot][:, :, slot]
            groups.append(block.reshape(n_rows, -1))
        n_groups = len(groups)
        grid = torch.tensor([[n_groups, int(grids[0][1]), int(grids[0][2])]])
        per_group = n_rows // self.merge**2
        if self.split_video_frames:
            segs = [s for _ in range(n_groups) for s in self._wrap(per_group, VIDEO, self.video_token_id)]
        else:
            segs = self._wrap(per_group * n_groups, VIDEO, self.video_token_id)
        return segs, {"pixel_values_videos": torch.cat(groups), "video_grid_thw": grid}

    def compute_position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             kinds: torch.Tensor, media: dict[str, torch.Tensor]) -> torch.Tensor:
        """M-RoPE (3, B, L) from the model's own ``get_rope_index``; text-only rows use equal 1-D positions."""
        if not media:
            text = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            return text[None].expand(3, -1, -1).clone()
        positions, _ = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=kinds.int(),
            image_grid_thw=media.get("image_grid_thw"),
            video_grid_thw=media.get("video_grid_thw"),
            attention_mask=attention_mask,
        )
        return positions

    def media_kwargs(self, media: dict[str, torch.Tensor], kinds: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**media, "mm_token_type_ids": kinds.int()} if media else {}

    def save_processors(self, directory: str) -> None:
        super().save_processors(directory)
        self.image_processor.save_pretrained(directory)
