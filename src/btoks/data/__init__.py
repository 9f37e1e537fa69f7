"""Readers, media loading and batching."""

from btoks.data.sample import IMAGE_TOKEN, VIDEO_TOKEN, Sample

__all__ = ["IMAGE_TOKEN", "VIDEO_TOKEN", "Sample"]
