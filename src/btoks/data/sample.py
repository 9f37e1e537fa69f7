"""The one input type every reader produces and every backbone consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

IMAGE_TOKEN = "<image>"
"""Marks where an image goes in ``Sample.text``; images without a marker are placed before the text."""
VIDEO_TOKEN = "<video>"
"""Marks where the video goes in ``Sample.text``; a video without a marker is placed before the text."""


@dataclass
class Sample:
    """One side of a pair (query or candidate), already loaded.

    ``instruction`` is prepended to ``text`` (VLM2Vec style: ``"{instruction} {text}"``). ``images`` are decoded
    PIL images in the order of the ``<image>`` markers. ``video`` is a list of frames (already sampled).
    ``target`` is the text a GIC pass generates from this sample's BToks (``None``: no generative loss).
    """

    text: str = ""
    instruction: str = ""
    images: list[Image.Image] = field(default_factory=list)
    video: list[Image.Image] | None = None
    id: str = ""
    target: str | None = None

    def __post_init__(self) -> None:
        """Catch paths passed as images here, with a message, rather than as an AttributeError deep inside."""
        for name, items in (("images", self.images), ("video", self.video or [])):
            for i, im in enumerate(items):
                if not isinstance(im, Image.Image):
                    raise ValueError(
                        f"Sample.{name}[{i}] must be a decoded PIL image, got {type(im).__name__} {im!r:.80}; "
                        "give paths to btoks.encode (or decode with btoks.data.media.load_image first)"
                    )

    @property
    def prompt(self) -> str:
        if self.instruction and self.text:
            return f"{self.instruction} {self.text}"
        return self.instruction or self.text

    @property
    def modality(self) -> str:
        """``text``, ``image``, ``video``, or ``text+image`` style tags for reports."""
        parts = [m for m, present in (("video", self.video), ("image", self.images)) if present]
        if self.text.replace(IMAGE_TOKEN, "").replace(VIDEO_TOKEN, "").strip():
            parts.append("text")
        return "+".join(parts) or "empty"
