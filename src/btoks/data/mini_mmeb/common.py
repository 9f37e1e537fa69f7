"""Shared pieces of the mini-MMEB builders: constants, the set table, row writers, the per-split helper."""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from btoks.eval.registry import DatasetSpec

if TYPE_CHECKING:
    from btoks.data.mini_mmeb.sources import ShapeItem, Sources


NAME = "mini-mmeb"


VERSION = 4  # 2: mini-Slides-docs replaces mini-LeeNews-docs; 3: quick has 256 training rows per set (was 32);
# 4: mini-Moment cuts four events of different shapes together (was one shape changing direction: at chance)


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


SIZES = {"quick": SizePreset(32, 256, 32), "full": SizePreset(200, 800, 100)}


def _set(name: str, modality: str, meta_task: str, query_instruction: str, target_instruction: str,
         ntp_side: str, metric: str = "hit@1") -> DatasetSpec:
    """A registry :class:`DatasetSpec` for one mini-MMEB set (its data sits under the build's root)."""
    return DatasetSpec(name=name, modality=modality, meta_task=meta_task, metric=metric,
                       query_instruction=query_instruction, target_instruction=target_instruction,
                       ntp_side=ntp_side, media_root=".")


# VLM2Vec-V2 style instructions; "<|image_1|>" leads wherever that side carries an image.
SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        _set("mini-Shapes-cls", "image", "classification",
             f"{IMG} Represent the given image for classification", "", "positive"),
        _set("mini-Digits-cls", "image", "classification",
             f"{IMG} Represent the given image for classification", "", "positive"),
        _set("mini-EasyVQA", "image", "vqa",
             f"{IMG} Represent the given image with the following question:", "", "positive"),
        _set("mini-Shapes-t2i", "image", "retrieval",
             "Find me an everyday image that matches the given caption:",
             f"{IMG} Represent the given image.", "query"),
        _set("mini-Shapes-i2t", "image", "retrieval",
             f"{IMG} Find an image caption describing the given everyday image.", "", "positive"),
        _set("mini-Shapes-edit", "image", "retrieval",
             f"{IMG} Given an image, find a similar everyday image with the described changes:",
             f"{IMG} Represent the given image.", "none"),
        _set("mini-Grounding", "image", "grounding",
             f"{IMG} Select the portion of the image that isolates the object labeled as",
             f"{IMG} Represent the given cropped image of the object", "query"),
        _set("mini-Motion-cls", "video", "classification",
             "Represent the given video for classification", "", "positive"),
        _set("mini-Motion-QA", "video", "qa",
             "Represent the given video with the following question:", "", "positive"),
        _set("mini-Motion-t2v", "video", "retrieval",
             "Find a video that contains the following visual content:",
             "Understand the content of the provided video.", "query"),
        _set("mini-Moment", "video", "moment_retrieval",
             "Given a video, find the clip that shows the following moment:",
             "Understand the content of the provided video clip.", "query"),
        _set("mini-Slides-docs", "visdoc", "visdoc",
             "Find a document image that matches the given query:",
             f"{IMG} Understand the content of the provided document image.", "query", metric="ndcg@5"),
    ]
}


def keyed_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator keyed by the seed and names, so sets sample independently of build order."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def pick(rng: np.random.Generator, items: Sequence[Any], k: int, exclude: Iterable[Any] = ()) -> list[Any]:
    """Up to ``k`` distinct items not in ``exclude``, in random order."""
    skip = set(exclude)
    pool = [x for x in dict.fromkeys(items) if x not in skip]
    order = rng.permutation(len(pool))[:k]
    return [pool[i] for i in order]


def shuffled(rng: np.random.Generator, items: Sequence[Any]) -> list[Any]:
    return [items[i] for i in rng.permutation(len(items))]


class Writer:
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


def eval_row(
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


def join_text(inst: str, text: str) -> str:
    return f"{inst} {text}".strip() if inst else text


def train_row(
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


@dataclass
class Built:
    """What one builder produced for one dataset."""

    spec: DatasetSpec
    eval_rows: list[dict[str, Any]] | None = None
    visdoc: dict[str, list[dict[str, Any]]] | None = None
    train_rows: list[dict[str, Any]] = field(default_factory=list)
    eval_sources: set[str] = field(default_factory=set)
    train_sources: set[str] = field(default_factory=set)

    def sources(self, split: str) -> set[str]:
        """The source-item ids used by ``split`` (for the split audit in sources.json)."""
        return self.eval_sources if split == "test" else self.train_sources


@dataclass
class Ctx:
    seed: int
    size: SizePreset
    out: Writer
    src: Sources

    def rng(self, name: str, split: str) -> np.random.Generator:
        return keyed_rng(self.seed, name, split)

    def n(self, split: str) -> int:
        return self.size.eval_queries if split == "test" else self.size.train_rows

    def sprite_pool(self, rng: np.random.Generator, split: str, k: int) -> list[ShapeItem]:
        """``k`` random images usable as sprites (only the images drawn are measured, not the whole split)."""
        out = []
        for item in pick(rng, self.src.shapes(split), len(self.src.shapes(split))):
            if not item.touches_border:
                out.append(item)
                if len(out) == k:
                    break
        return out

    def shape_image(self, item: ShapeItem) -> str:
        return self.out.copy(f"images/easyvqa/{item.split}/{item.id}.png", item.path)


SPLITS = ("test", "train")
"""Build order of the splits: test first, as every set's random stream and file writes always ran."""

SplitRows = Callable[[str, np.random.Generator, Built], list[dict[str, Any]]]


def per_split(ctx: Ctx, name: str, split_rows: SplitRows) -> Built:
    """Run one set's ``split_rows(split, rng, built)`` for each split with that split's own generator.

    ``split_rows`` returns the split's table rows (a visual-document set fills ``built.visdoc`` for the test
    split and returns nothing) and records source ids in ``built.sources(split)``.
    """
    built = Built(SPECS[name])
    for split in SPLITS:
        rows = split_rows(split, ctx.rng(name, split), built)
        if split == "test":
            built.eval_rows = rows
        else:
            built.train_rows = rows
    return built
