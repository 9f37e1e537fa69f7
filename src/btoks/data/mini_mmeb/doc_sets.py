"""Visual-document sets (BEIR tables, global ranking over the whole corpus, graded qrels).

``mini-Slides-docs`` replaces the earlier rendered-news set, whose pages could only be matched by *reading*
small text — which neither arm of btoks-mini can do at 160 px (both sat at nDCG@5 ≈ 3, measuring nothing).
Each page is a slide: a title and body lines of real news text (the document look, not needed to solve it) and
a figure of two easy-vqa shapes drawn large. A query names the figure ("a slide showing a red circle and a blue
triangle"): the page with both objects is relevant 2, pages showing either object 1, so nDCG@5 rewards
ranking the exact slide first and the partial matches next.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from btoks.data.mini_mmeb.common import Built, Ctx, join_text, per_split, pick, train_row
from btoks.data.mini_mmeb.render import PAGE_SIZE, page_font, paginate
from btoks.data.mini_mmeb.sources import ShapeItem

FIGURE_SIDE = 84


def _slide(title: str, body: list[str], objects: list[ShapeItem]) -> Image.Image:
    """A white page: title, a figure of ``objects`` side by side on a light panel, then body text."""
    from PIL import ImageDraw

    page = Image.new("RGBA", PAGE_SIZE, (255, 255, 255, 255))
    draw = ImageDraw.Draw(page)
    draw.text((10, 8), title, fill=(20, 20, 90), font=page_font(13))
    top = 30
    draw.rectangle((8, top, PAGE_SIZE[0] - 8, top + FIGURE_SIDE + 16), fill=(236, 238, 242))
    gap = (PAGE_SIZE[0] - 16 - len(objects) * FIGURE_SIDE) // (len(objects) + 1)
    for k, item in enumerate(objects):
        sprite = item.sprite()
        scale = FIGURE_SIDE / max(sprite.size)
        sprite = sprite.resize((max(4, round(sprite.width * scale)), max(4, round(sprite.height * scale))),
                               Image.Resampling.LANCZOS)
        x = 8 + gap + k * (FIGURE_SIDE + gap) + (FIGURE_SIDE - sprite.width) // 2
        page.alpha_composite(sprite, (x, top + 8 + (FIGURE_SIDE - sprite.height) // 2))
    y = top + FIGURE_SIDE + 26
    for line in body:
        draw.text((10, y), line, fill=(40, 40, 40), font=page_font(10))
        y += 12
    return page.convert("RGB")


def _figure(items: list[ShapeItem]) -> str:
    return " and ".join(f"a {it.desc}" for it in items)


def build_slides_docs(ctx: Ctx) -> Built:
    """Slide retrieval by figure content: text query -> page, global ranking, graded relevance (exact 2, one
    shared object 1). Shapes and news text come from each split's own sources."""
    set_name = "mini-Slides-docs"
    lines_per_page = 12

    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        texts = ctx.src.lee[split]
        pool = ctx.sprite_pool(rng, split, 400)
        n_queries = ctx.size.doc_queries if split == "test" else ctx.size.train_rows
        n_pages = 2 * n_queries if split == "test" else n_queries
        pages: list[tuple[str, list[ShapeItem]]] = []  # (path, objects)
        used: set[tuple[str, ...]] = set()
        while len(pages) < n_pages:
            a, c = (pool[int(i)] for i in rng.choice(len(pool), size=2, replace=False))
            key = tuple(sorted((a.desc, c.desc)))
            if a.desc == c.desc or (split == "test" and key in used):  # test figures are unique (24·23/2 pairs)
                continue
            used.add(key)
            d = len(pages) % len(texts)
            doc = texts[d]  # body text: the split's own news documents
            words = doc.split()
            title = " ".join(words[:5])
            body = paginate(" ".join(words[5:]), page_font(10), PAGE_SIZE[0] - 20, lines_per_page)[0]
            rel = f"images/slides/{split}/{len(pages):04d}.png"
            pages.append((ctx.out.image(rel, _slide(title, body, [a, c])), [a, c]))
            b.sources(split).update([a.source_id, c.source_id, f"{'lee' if split == 'test' else 'lee_background'}/{d}"])
        order = [int(i) for i in rng.permutation(n_pages)[:n_queries]]
        if split == "train":
            rows = []
            for p in order:
                path, objs = pages[p]
                sharing = [q for q, (_, o) in enumerate(pages) if q != p and {x.desc for x in o} & {x.desc for x in objs}]
                neg = pages[(pick(rng, sharing, 1) or [(p + 1) % n_pages])[0]][0]
                text = f"a slide showing {_figure(objs)}"
                rows.append(train_row(join_text(b.spec.query_instruction, text), "", b.spec.target_instruction, path,
                                      b.spec.target_instruction, neg, text))
            return rows
        corpus = [{"corpus-id": f"slide{p:04d}", "image": path} for p, (path, _) in enumerate(pages)]
        queries, qrels = [], []
        for qi, p in enumerate(order):
            objs = pages[p][1]
            qid = f"q{qi:04d}"
            queries.append({"query-id": qid, "query": f"a slide showing {_figure(objs)}"})
            wanted = {x.desc for x in objs}
            for q, (_, other) in enumerate(pages):
                shared = len(wanted & {x.desc for x in other})
                if q == p or shared:
                    qrels.append({"query-id": qid, "corpus-id": f"slide{q:04d}", "score": 2 if q == p else 1})
        b.visdoc = {"queries": queries, "corpus": corpus, "qrels": qrels}
        return []

    return per_split(ctx, set_name, split_rows)
