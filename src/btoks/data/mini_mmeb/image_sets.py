"""Image sets: classification (shapes, digits), VQA, retrieval (t2i, i2t, edit) and grounding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from btoks.data.mini_mmeb.common import (
    COLORS,
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
from btoks.data.mini_mmeb.render import compose_scene, pad_box
from btoks.data.mini_mmeb.sources import POS_PHRASE, ShapeItem, shape_caption


def _label(color: str, shape: str) -> str:
    return f"a {color} {shape}"


def build_shapes_cls(ctx: Ctx) -> Built:
    """24-way colour x shape classification; negatives favour labels sharing the colour or the shape."""
    set_name = "mini-Shapes-cls"
    labels = [(c, s) for c in COLORS for s in SHAPES]
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        rows = []
        for item in pick(rng, ctx.src.shapes(split), ctx.n(split)):
            same = [lab for lab in labels if (lab[0] == item.color) != (lab[1] == item.shape)]
            hard = pick(rng, same, 5)
            rest = pick(rng, labels, 9 - len(hard), exclude=[*hard, (item.color, item.shape)])
            negs = [_label(*lab) for lab in hard + rest]
            img = ctx.shape_image(item)
            pos = _label(item.color or "", item.shape or "")
            if split == "test":
                rows.append(eval_row(b.spec.query_instruction, "", img, "", [pos, *shuffled(rng, negs)]))
            else:
                rows.append(train_row(b.spec.query_instruction, img, pos, "", negs[0], "", pos))
            b.sources(split).add(item.source_id)
        return rows

    return per_split(ctx, set_name, split_rows)


def build_digits_cls(ctx: Ctx) -> Built:
    """Handwritten digits (8x8, upsampled to 64 px, dark on white); every row ranks all 10 labels."""
    set_name = "mini-Digits-cls"
    images, targets = ctx.src.digits
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        idx = [i for i in range(len(targets)) if (i % 5 == 0) == (split == "test")]
        rows = []
        for i in pick(rng, idx, ctx.n(split)):
            arr = (255 - images[i] * (255 / 16)).clip(0, 255).astype(np.uint8)
            img = Image.fromarray(arr).resize((64, 64), Image.Resampling.BICUBIC)
            path = ctx.out.image(f"images/digits/{split}/{i:04d}.png", img)
            pos = f"a handwritten digit {targets[i]}"
            others = [f"a handwritten digit {d}" for d in shuffled(rng, [d for d in range(10) if d != targets[i]])]
            if split == "test":
                rows.append(eval_row(b.spec.query_instruction, "", path, "", [pos, *others]))
                b.eval_sources.add(f"digits/{i}")
            else:
                rows.append(train_row(b.spec.query_instruction, path, pos, "", others[0], "", pos))
                b.train_sources.add(f"digits/{i}")
        return rows

    return per_split(ctx, set_name, split_rows)


def _answer_kind(answer: str) -> str:
    return "color" if answer in COLORS else "shape" if answer in SHAPES else "yesno"


def _vqa_candidates(rng: np.random.Generator, answer: str) -> list[str]:
    """Eight answers: the right one, the most confusable ones of its kind, then other answers."""
    kind = _answer_kind(answer)
    if kind == "color":
        return [answer, *pick(rng, COLORS, 7, exclude=[answer])]
    if kind == "shape":
        return [answer, *pick(rng, SHAPES, 2, exclude=[answer]), "yes", "no", *pick(rng, COLORS, 3)]
    other = "no" if answer == "yes" else "yes"
    return [answer, other, *pick(rng, SHAPES, 2), *pick(rng, COLORS, 4)]


def build_easyvqa(ctx: Ctx) -> Built:
    """easy-vqa questions, balanced over answer kinds (yes/no, colour, shape), one question per image."""
    set_name = "mini-EasyVQA"
    kinds = ("yesno", "color", "shape")
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        rows = []
        items = pick(rng, ctx.src.easyvqa[split], ctx.n(split))
        for k, item in enumerate(items):
            want = kinds[k % 3]
            qs = [qa for qa in item.questions if _answer_kind(qa[1]) == want] or item.questions
            question, answer = qs[int(rng.integers(len(qs)))]
            cands = _vqa_candidates(rng, answer)
            img = ctx.shape_image(item)
            if split == "test":
                rows.append(eval_row(b.spec.query_instruction, question, img, "",
                                      [cands[0], *shuffled(rng, cands[1:])]))
                b.eval_sources.add(item.source_id)
            else:
                rows.append(train_row(join_text(b.spec.query_instruction, question), img, answer, "", cands[1], "",
                                       answer))
                b.train_sources.add(item.source_id)
        return rows

    return per_split(ctx, set_name, split_rows)


def _shared_attrs(a: ShapeItem, b: ShapeItem) -> int:
    return sum(x == y for x, y in zip(a.attrs, b.attrs, strict=True))


def _hard_image_negatives(
    rng: np.random.Generator, item: ShapeItem, pool: Sequence[ShapeItem], k: int
) -> list[ShapeItem]:
    """``k`` images whose caption differs from ``item``'s, half of them sharing >= 2 of its 4 attributes."""
    different = [p for p in pool if p.caption != item.caption and p.id != item.id]
    close = [p for p in different if _shared_attrs(p, item) >= 2]
    hard = pick(rng, close, k // 2)
    return hard + pick(rng, different, k - len(hard), exclude=hard)


def _altered_captions(rng: np.random.Generator, item: ShapeItem, k: int) -> list[str]:
    """``k`` distinct wrong captions, each changing one or two attributes of the true one."""
    size, color, shape, pos = item.attrs
    options = {
        "size": [s for s in ("small", "medium", "large") if s != size],
        "color": [c for c in COLORS if c != color],
        "shape": [s for s in SHAPES if s != shape],
        "pos": [p for p in POS_PHRASE if p != pos],
    }
    out: list[str] = []
    for _ in range(200):
        if len(out) == k:
            break
        new = {"size": size, "color": color, "shape": shape, "pos": pos}
        for attr in pick(rng, list(options), 1 + int(rng.integers(2))):
            choices = options[attr]
            new[attr] = choices[int(rng.integers(len(choices)))]
        cap = shape_caption(new["size"], new["color"], new["shape"], new["pos"])
        if cap != item.caption and cap not in out:
            out.append(cap)
    return out


def build_shapes_t2i(ctx: Ctx) -> Built:
    """Caption -> image; captions come from Q/A facts (colour, shape) and measured size / position."""
    set_name = "mini-Shapes-t2i"
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        shapes = ctx.src.shapes(split)
        pool = pick(rng, shapes, min(len(shapes), max(400, ctx.n(split))))
        rows = []
        for item in pool[: ctx.n(split)]:
            negs = _hard_image_negatives(rng, item, pool, 7)
            if split == "test":
                imgs = [ctx.shape_image(x) for x in [item, *negs]]
                rows.append(eval_row(b.spec.query_instruction, item.caption, "", b.spec.target_instruction,
                                      [""] * len(imgs), imgs))
                b.eval_sources.update(x.source_id for x in [item, *negs])
            else:
                rows.append(train_row(join_text(b.spec.query_instruction, item.caption), "",
                                       b.spec.target_instruction, ctx.shape_image(item),
                                       b.spec.target_instruction, ctx.shape_image(negs[0]), item.caption))
                b.train_sources.update(x.source_id for x in (item, negs[0]))
        return rows

    return per_split(ctx, set_name, split_rows)


def build_shapes_i2t(ctx: Ctx) -> Built:
    """Image -> caption; the wrong captions alter one or two attributes (hard, text-only negatives)."""
    set_name = "mini-Shapes-i2t"
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        rows = []
        for item in pick(rng, ctx.src.shapes(split), ctx.n(split)):
            negs = _altered_captions(rng, item, 7)
            img = ctx.shape_image(item)
            if split == "test":
                rows.append(eval_row(b.spec.query_instruction, "", img, "", [item.caption, *negs]))
                b.eval_sources.add(item.source_id)
            else:
                rows.append(train_row(b.spec.query_instruction, img, item.caption, "", negs[0], "", item.caption))
                b.train_sources.add(item.source_id)
        return rows

    return per_split(ctx, set_name, split_rows)


def build_shapes_edit(ctx: Ctx) -> Built:
    """CIRR-like composed retrieval: image + edit text -> the edited image (the unedited one is a negative)."""
    set_name = "mini-Shapes-edit"
    kinds = ("color", "shape", "both")
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        pool = ctx.sprite_pool(rng, split, ctx.n(split) + 300)
        rows = []
        for r, item in enumerate(pool[: ctx.n(split)]):
            kind = kinds[r % 3]
            color, shape = item.color or "", item.shape or ""
            new_color = pick(rng, COLORS, 1, exclude=[color])[0] if kind != "shape" else color
            new_shape = pick(rng, SHAPES, 1, exclude=[shape])[0] if kind != "color" else shape
            text = {
                "color": f"make the {shape} {new_color}",
                "shape": f"turn the {color} {shape} into a {new_shape}",
                "both": f"replace the {color} {shape} with a {new_color} {new_shape}",
            }[kind]
            wrong = [(c, s) for c in COLORS for s in SHAPES
                     if (c, s) not in {(new_color, new_shape), (color, shape)}
                     and (c == new_color or s == new_shape)]
            variants = [(new_color, new_shape), *pick(rng, wrong, 2)]
            base = f"images/edit/{split}/{r:04d}"
            made = [ctx.out.image(f"{base}_{k}.png", item.redrawn(s, c)) for k, (c, s) in enumerate(variants)]
            source_img = ctx.shape_image(item)
            if split == "test":
                lookalikes = [p for p in pool if p.color == new_color and p.shape == new_shape]
                others = pick(rng, lookalikes, 2) + pick(rng, pool, 8, exclude=[item])
                others = list(dict.fromkeys(others))[: 8 - len(made) - 1]
                imgs = [made[0], source_img, *made[1:], *(ctx.shape_image(o) for o in others)]
                rows.append(eval_row(b.spec.query_instruction, text, source_img, b.spec.target_instruction,
                                      [""] * len(imgs), [imgs[0], *shuffled(rng, imgs[1:])]))
                b.eval_sources.update([item.source_id, *(o.source_id for o in others)])
            else:
                rows.append(train_row(join_text(b.spec.query_instruction, text), source_img,
                                       b.spec.target_instruction, made[0], b.spec.target_instruction, source_img, ""))
                b.train_sources.add(item.source_id)
        return rows

    return per_split(ctx, set_name, split_rows)


def build_grounding(ctx: Ctx) -> Built:
    """Referring-expression grounding: scene + label -> the crop isolating that object.

    Negatives, hardest first: other objects of the same scene, a half-shifted crop of the target, a background
    patch, then objects cropped from other scenes.
    """
    set_name = "mini-Grounding"
    canvas = 128
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        n = ctx.n(split)
        shapes = ctx.sprite_pool(rng, split, 300)
        scenes = [compose_scene(rng, ctx, split, shapes, canvas) for _ in range(n)]
        crops: list[list[str]] = []
        for s, scene in enumerate(scenes):
            ctx.out.image(f"images/grounding/{split}/{s:04d}.png", scene.image)
            crops.append([
                ctx.out.image(f"images/grounding/{split}/{s:04d}_obj{j}.png", scene.image.crop(pad_box(box, 3, canvas)))
                for j, box in enumerate(scene.boxes)
            ])
            b.sources(split).update(scene.sources)
        rows = []
        for s, scene in enumerate(scenes):
            t = int(rng.integers(len(scene.boxes)))
            label = scene.labels[t]
            scene_path = f"images/grounding/{split}/{s:04d}.png"
            others = [c for j, c in enumerate(crops[s]) if j != t]
            if split == "train":
                rows.append(train_row(f'{b.spec.query_instruction} "{label}"', scene_path,
                                       b.spec.target_instruction, crops[s][t],
                                       b.spec.target_instruction, others[int(rng.integers(len(others)))], label))
                continue
            x0, y0, x1, y1 = scene.boxes[t]
            dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1)][int(rng.integers(4))]
            sx, sy = dx * (x1 - x0) // 2, dy * (y1 - y0) // 2
            shifted = pad_box((x0 + sx, y0 + sy, x1 + sx, y1 + sy), 3, canvas)
            extra = [ctx.out.image(f"images/grounding/{split}/{s:04d}_shift.png", scene.image.crop(shifted))]
            side = max(x1 - x0, y1 - y0)
            for _ in range(100):
                bx, by = int(rng.integers(0, canvas - side)), int(rng.integers(0, canvas - side))
                patch = (bx, by, bx + side, by + side)
                if all(patch[0] >= o[2] or patch[2] <= o[0] or patch[1] >= o[3] or patch[3] <= o[1]
                       for o in scene.boxes):
                    extra.append(ctx.out.image(f"images/grounding/{split}/{s:04d}_bg.png", scene.image.crop(patch)))
                    break
            foreign = [c for o in shuffled(rng, [i for i in range(n) if i != s])
                       for c, lab in zip(crops[o], scenes[o].labels, strict=True) if lab != label]
            negs = (others + extra + foreign[:8])[:7]
            rows.append(eval_row(b.spec.query_instruction, f'"{label}"', scene_path, b.spec.target_instruction,
                                  [""] * (1 + len(negs)), [crops[s][t], *shuffled(rng, negs)]))
        return rows

    return per_split(ctx, set_name, split_rows)
