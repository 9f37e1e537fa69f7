"""Shared helpers for the encode / index / server tests: one tiny saved model per session, small media files.

Plain cached functions rather than conftest fixtures, so the model is built and saved once per pytest session
even though three test modules use it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from btoks import BToksConfig, BToksModel
from btoks.backbones.tiny import tiny_backbone


@lru_cache(maxsize=1)
def tiny_model_dir() -> Path:
    """The tiny random-weight Qwen2-VL model with 4 BToks, saved with ``save_pretrained``."""
    root = Path(tempfile.mkdtemp(prefix="btoks-serve-tests-"))
    atexit.register(shutil.rmtree, root, True)
    BToksModel(tiny_backbone("qwen2_vl"), BToksConfig(num_btoks=4)).save_pretrained(root / "model")
    return root / "model"


@lru_cache(maxsize=1)
def tiny_model() -> BToksModel:
    """Loaded back from disk (what the CLI and the server do)."""
    return BToksModel.from_pretrained(tiny_model_dir()).eval()


def color_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def write_pdf(path: Path, pages: int = 2) -> Path:
    first, *rest = [color_image(100 + i, (80, 60)) for i in range(pages)]
    first.save(path, save_all=True, append_images=rest)
    return path


def write_video(path: Path, frames: int = 8, size: tuple[int, int] = (64, 64)) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            arr = np.full((size[1], size[0], 3), (i * 30) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_corpus(root: Path) -> Path:
    """3 images, a 2-page PDF, a video, 2 text files (one nested), plus files the walker must skip."""
    root.mkdir(parents=True, exist_ok=True)
    for i, ext in enumerate(("png", "jpg", "webp")):
        color_image(i).save(root / f"img{i}.{ext}")
    write_pdf(root / "doc.pdf", pages=2)
    write_video(root / "clip.mp4")
    (root / "notes.txt").write_text("the quick brown fox jumps over the lazy dog")
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "readme.md").write_text("# a circle, a square and a triangle in blue, green and yellow")
    (root / ".hidden.txt").write_text("hidden files are skipped")
    (root / "data.csv").write_text("a,b\n1,2\n")
    return root
