"""Visual-document sets (BEIR tables, global ranking, graded qrels)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from btoks.data.mini_mmeb.common import Built, Ctx, join_text, per_split, train_row
from btoks.data.mini_mmeb.render import PAGE_SIZE, page_font, paginate, render_page

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


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
    set_name = "mini-LeeNews-docs"
    stop = _STOPWORDS
    font = page_font(11)
    lee = ctx.src.lee
    all_docs = lee["test"] + lee["train"]
    df = Counter(t for d in all_docs for t in set(_tokens(d, stop)))
    # smoothed idf: a word's frequency in the document still counts, so keywords are topical, not just rare
    idf = {t: float(np.log((len(all_docs) + 1) / (c + 1)) + 1) for t, c in df.items()}
    lines_per_page = (PAGE_SIZE[1] - 30) // 13
    def split_rows(split: str, rng: np.random.Generator, b: Built) -> list[dict[str, Any]]:
        prefix = "lee" if split == "test" else "lee_background"
        texts = lee[split]
        corpus_text = "\n".join(all_docs)
        docs = [_Doc(f"{prefix}/{i}", t, paginate(t, font, PAGE_SIZE[0] - 20, lines_per_page))
                for i, t in enumerate(texts)]
        page_paths: dict[tuple[int, int], str] = {}

        def page(d: int, p: int, docs: list[_Doc] = docs, split: str = split,
                 page_paths: dict[tuple[int, int], str] = page_paths) -> str:
            if (d, p) not in page_paths:
                img = render_page(docs[d].pages[p], p + 1, len(docs[d].pages))
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
            return []
        rows = []
        for text, d, p in queries:
            pos_page = p if p is not None else 0
            others = [pp for pp in range(len(docs[d].pages)) if pp != pos_page]
            if p is not None and others:
                neg = page(d, others[int(rng.integers(len(others)))])
            else:
                o = (d + 1 + int(rng.integers(len(docs) - 1))) % len(docs)
                neg = page(o, 0)
                b.train_sources.add(docs[o].source_id)
            rows.append(train_row(join_text(b.spec.query_instruction, text), "", b.spec.target_instruction,
                                           page(d, pos_page), b.spec.target_instruction, neg, text))
            b.train_sources.add(docs[d].source_id)
        return rows

    return per_split(ctx, set_name, split_rows)
