"""Small built-in example sets, generated in memory, so training runs with no data on disk.

``shapes``: an image of a coloured shape ↔ its caption (image→text, GIC target = caption).
``text``: a short description ↔ a paraphrase (text→text, GIC target = the paraphrase).
They are for smoke runs and tests; real experiments read MMEB-train data (``btoks.data.readers``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from PIL import Image, ImageDraw

from btoks.data.readers import TrainPair
from btoks.data.sample import Sample

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
PLACES = {"left": 0.3, "right": 0.7}


def draw_shape(color: str, shape: str, place: str, size: int = 56) -> Image.Image:
    img = Image.new("RGB", (size, size), (250, 250, 250))
    d = ImageDraw.Draw(img)
    cx, cy, r = PLACES[place] * size, size / 2, size * 0.18
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        d.rectangle(box, fill=COLORS[color])
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLORS[color])
    return img


class ExampleSet(Sequence[TrainPair]):
    """A named, in-memory list of pairs (what ``ConcatTrainSets`` and ``MixtureSampler`` expect)."""

    def __init__(self, name: str, pairs: list[TrainPair]) -> None:
        self.name, self.pairs = name, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> TrainPair:  # type: ignore[override]
        return self.pairs[i]


def shapes() -> ExampleSet:
    pairs = []
    for i, (color, shape, place) in enumerate(itertools.product(COLORS, SHAPES, PLACES)):
        caption = f"a {color} {shape} on the {place}"
        query = Sample(text="<image>", instruction="Represent the given image.",
                       images=[draw_shape(color, shape, place)], id=f"shapes-{i}-q", target=caption)
        pairs.append(TrainPair(query, Sample(text=caption, id=f"shapes-{i}-p"), dataset="shapes"))
    return ExampleSet("shapes", pairs)


def text() -> ExampleSet:
    pairs = []
    for i, (color, shape, place) in enumerate(itertools.product(COLORS, SHAPES, PLACES)):
        q = f"where is the {color} {shape}?"
        p = f"the {shape} that is {color} sits on the {place} side"
        pairs.append(TrainPair(Sample(text=q, id=f"text-{i}-q", target=p), Sample(text=p, id=f"text-{i}-p"),
                               dataset="text"))
    return ExampleSet("text", pairs)


EXAMPLES = {"shapes": shapes, "text": text}


def load_examples(names: str) -> list[ExampleSet]:
    """Comma-separated example set names, e.g. ``"shapes,text"``."""
    out = []
    for name in names.split(","):
        if name.strip() not in EXAMPLES:
            raise ValueError(f"unknown example set {name!r}; choose from {', '.join(EXAMPLES)}")
        out.append(EXAMPLES[name.strip()]())
    return out
