"""Renderers: flat shapes, composed grounding scenes, motion clips and document pages (pure PIL, deterministic)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from btoks.data.mini_mmeb.common import NUM_FRAMES, pick, shuffled

if TYPE_CHECKING:
    from btoks.data.mini_mmeb.common import Ctx
    from btoks.data.mini_mmeb.sources import ShapeItem


def draw_shape(
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


# Disjoint photo pools: a photo object seen in training never appears in evaluation.
PHOTOS = {
    "test": {"chelsea.png": "the cat", "coffee.png": "the cup of coffee", "rocket.jpg": "the rocket",
             "motorcycle_left.png": "the motorcycle", "astronaut.png": "the astronaut"},
    "train": {"camera.png": "the photographer", "coins.png": "the coins", "horse.png": "the horse",
              "moon.png": "the moon", "hubble_deep_field.jpg": "the galaxies", "retina.jpg": "the retina"},
}


@dataclass
class Scene:
    image: Image.Image
    boxes: list[tuple[int, int, int, int]]
    labels: list[str]
    sources: list[str]


def compose_scene(
    rng: np.random.Generator, ctx: Ctx, split: str, shapes: Sequence[ShapeItem], canvas: int = 128
) -> Scene:
    """Paste 3-4 objects (easy-vqa shapes, maybe one photo) without overlap onto a pastel canvas."""
    while True:  # placement almost always succeeds; a crowded draw is simply redrawn
        scene = _try_scene(rng, ctx, split, shapes, canvas)
        if len(scene.boxes) >= 3:
            return scene


def _try_scene(
    rng: np.random.Generator, ctx: Ctx, split: str, shapes: Sequence[ShapeItem], canvas: int
) -> Scene:
    bg = tuple(int(v) for v in rng.integers(215, 251, size=3))
    img = Image.new("RGBA", (canvas, canvas), (*bg, 255))
    use_photo = bool(rng.random() < 0.5)
    objs: list[tuple[Image.Image, str, str]] = []
    if use_photo:
        name = pick(rng, sorted(PHOTOS[split]), 1)[0]
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
    return Scene(img.convert("RGB"), boxes, labels, sources)


def pad_box(box: tuple[int, int, int, int], pad: int, canvas: int) -> tuple[int, int, int, int]:
    return (max(0, box[0] - pad), max(0, box[1] - pad), min(canvas, box[2] + pad), min(canvas, box[3] + pad))


MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "still")


MOTION_LABEL = {"left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
                "grow": "growing", "shrink": "shrinking", "still": "standing still"}


MOTION_PHRASE = {"left": "moves to the left", "right": "moves to the right", "up": "moves up", "down": "moves down",
                 "grow": "grows bigger", "shrink": "shrinks", "still": "stays still"}


STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow",
             "still": "grow"}


def _scaled(sprite: Image.Image, side: float) -> Image.Image:
    s = side / max(sprite.size)
    return sprite.resize((max(2, round(sprite.width * s)), max(2, round(sprite.height * s))),
                         Image.Resampling.LANCZOS)


def _paste_center(frame: Image.Image, sprite: Image.Image, cx: float, cy: float) -> None:
    frame.alpha_composite(sprite, (round(cx - sprite.width / 2), round(cy - sprite.height / 2)))


@dataclass
class Actor:
    sprite: Image.Image
    side: float
    path: list[tuple[float, float, float]]  # (cx, cy, scale) per frame


def render_clip(bg: tuple[int, int, int], actors: Sequence[Actor], canvas: int = 64) -> list[Image.Image]:
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


def motion_path(rng: np.random.Generator, motion: str, n: int = NUM_FRAMES, canvas: int = 64,
                 travel: float = 30.0, margin: float = 12.0) -> list[tuple[float, float, float]]:
    """Per-frame (cx, cy, scale) for one motion; linear moves cover ``travel`` px within the canvas."""
    lo, hi = margin, canvas - margin
    ts = np.linspace(0.0, 1.0, n)
    if motion in STEP:
        dx, dy = STEP[motion]
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


def motion_clip(rng: np.random.Generator, item: ShapeItem, motion: str) -> list[Image.Image]:
    return render_clip(item.bg, [Actor(item.sprite(), 18.0, motion_path(rng, motion))])


def moment_clip(rng: np.random.Generator, movers: Sequence[ShapeItem], seg: int = NUM_FRAMES
                ) -> tuple[list[Image.Image], list[str]]:
    """A clip of ``len(movers)`` events cut together: in event k sprite k, on its own background, moves in
    its own direction (distinct directions). Like a real video's scenes, an event is told apart by what it
    shows, and within it by how it moves."""
    dirs = shuffled(rng, ["left", "right", "up", "down"])[:len(movers)]
    frames: list[Image.Image] = []
    for item, d in zip(movers, dirs, strict=True):
        frames += render_clip(item.bg, [Actor(item.sprite(), 16.0, motion_path(rng, d, n=seg))])
    return frames, dirs


PAGE_SIZE = (224, 288)


@lru_cache(maxsize=8)
def page_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font (same glyphs on every machine with the same Pillow, unlike system fonts)."""
    return ImageFont.load_default(size=size)


_WIDTHS: dict[tuple[Any, str], float] = {}


def _width(font: Any, word: str) -> float:
    key = (getattr(font, "size", None), word)
    if key not in _WIDTHS:
        _WIDTHS[key] = float(font.getlength(word))
    return _WIDTHS[key]


def paginate(text: str, font: Any, width: int, lines_per_page: int) -> list[list[str]]:
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
