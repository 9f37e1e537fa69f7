"""Readers for MMEB-train, MMEB-V2-style eval tables (image/video, "local"), ViDoRe/BEIR visual documents
("global") and the generic btoks JSONL layout (docs/data-format.md); MMEB-V2 *as published* is read by
:mod:`btoks.data.mmeb_v2` on top of the same pieces.

Readers parse rows into :class:`SampleSpec` (text + media *references*) and validate them up front
(``check=``), so bad rows are raised or skipped-and-counted before any model time is spent; pixels are
decoded only when a sample is accessed, which keeps million-row training sets and 1000-candidate
evaluation sets cheap to hold. Identical specs are interned, so a label list repeated on every row of a
classification set is stored once. Every reader runs the one loop of :func:`read_rows`, and every unusable
input is a :class:`~btoks.data.errors.InputError` naming dataset, row and file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import numpy as np
from tqdm import tqdm

from btoks.data.errors import BAD_ROW, EMPTY, NO_QRELS, InputError, OnError, SkipLog
from btoks.data.media import MediaConfig, PdfPage
from btoks.data.mixture import MixtureSampler
from btoks.data.sample import IMAGE_TOKEN, VIDEO_TOKEN, Sample

T = TypeVar("T")
CheckLevel = Literal["none", "exists", "header", "full"]
NtpSide = Literal["positive", "query", "both", "none"]
TABLE_EXTENSIONS = (".jsonl", ".json", ".parquet", ".tsv", ".csv")

_IMAGE_MARK = re.compile(r"<\|image_\d+\|>|<\|image\|>")
_VIDEO_MARK = re.compile(r"<\|video_\d+\|>|<\|video\|>")

"""Reader errors are :class:`~btoks.data.errors.InputError` naming dataset, row and file."""


# ---------------------------------------------------------------- specs


ImageRef = str | bytes | PdfPage


@dataclass(frozen=True)
class SampleSpec:
    """A :class:`Sample` before decoding: text plus media references (paths relative to the media root)."""

    text: str = ""
    instruction: str = ""
    images: tuple[ImageRef, ...] = ()
    video: str | None = None
    id: str = ""
    target: str | None = None

    def key(self) -> tuple:
        """Identity for de-duplication: same instruction, text and media means the same embedding."""
        imgs = tuple(
            ("sha1", hashlib.sha1(i).hexdigest()) if isinstance(i, bytes) else i for i in self.images
        )
        return (self.instruction, self.text, imgs, self.video)

    @property
    def is_empty(self) -> bool:
        """No text (markers aside) and no media: nothing to embed."""
        return not (plain_text(self.text) or self.images or self.video)

    def files(self) -> list[str]:
        out = [i.path if isinstance(i, PdfPage) else i for i in self.images if not isinstance(i, bytes)]
        return out + ([self.video] if self.video else [])

    def check(self, media: MediaConfig, level: CheckLevel) -> None:
        """Raise :class:`InputError` when a referenced file is unusable at the given depth."""
        for img in self.images:
            media.check_image(img, level)
        if self.video:
            media.check_video(self.video, level)

    def load(self, media: MediaConfig) -> Sample:
        return Sample(
            text=self.text,
            instruction=self.instruction,
            images=[media.image(i) for i in self.images],
            video=media.video(self.video) if self.video else None,
            id=self.id,
            target=self.target,
        )


def normalize_markers(text: str) -> str:
    """MMEB ``<|image_1|>`` / ``<|video_1|>`` markers to the btoks ``<image>`` / ``<video>`` tokens."""
    return _VIDEO_MARK.sub(VIDEO_TOKEN, _IMAGE_MARK.sub(IMAGE_TOKEN, text or ""))


def plain_text(text: str) -> str:
    """Text with media markers removed (what a generative target or an emptiness check should see)."""
    return normalize_markers(text).replace(IMAGE_TOKEN, " ").replace(VIDEO_TOKEN, " ").strip()


def make_spec(text: Any = "", instruction: Any = "", images: Iterable[ImageRef] = (), video: Any = None,
              id: str = "", target: str | None = None) -> SampleSpec:
    """Build a spec, normalising markers; markers with no media behind them are dropped (they would make a
    backbone expect an image that is not there)."""
    images = tuple(i for i in images if i not in ("", None))
    video = str(video) if video else None
    text, instruction = normalize_markers(_str(text)), normalize_markers(_str(instruction))
    if not images:
        text, instruction = _drop(text, IMAGE_TOKEN), _drop(instruction, IMAGE_TOKEN)
    if not video:
        text, instruction = _drop(text, VIDEO_TOKEN), _drop(instruction, VIDEO_TOKEN)
    return SampleSpec(text=text, instruction=instruction, images=images, video=video, id=id, target=target)


def _drop(text: str, marker: str) -> str:
    """``text`` without ``marker`` (stripped only when one was removed: other whitespace is kept verbatim, the
    reference's prompts rely on it)."""
    return text.replace(marker, "").strip() if marker in text else text


def _str(x: Any) -> str:
    return "" if x is None else str(x)


def _image_ref(x: Any) -> ImageRef | None:
    """A table cell holding an image: path, raw bytes, or a Hugging Face ``{"bytes", "path"}`` struct."""
    if x is None or x == "":
        return None
    if isinstance(x, bytes | bytearray):
        return bytes(x)
    if isinstance(x, dict):
        if x.get("bytes"):
            return bytes(x["bytes"])
        if x.get("path"):
            return str(x["path"])
        if x.get("pdf"):
            return PdfPage(str(x["pdf"]), int(x.get("page") or 0))
        return None
    if isinstance(x, PdfPage):
        return x
    return str(x)


def _image_list(x: Any) -> list[ImageRef]:
    if x is None:
        return []
    items = x if isinstance(x, list | tuple | np.ndarray) else [x]
    return [r for r in (_image_ref(i) for i in items) if r is not None]


class _Interner:
    """Share identical specs across rows and remember validation outcomes, so a label list repeated on every
    row of a classification set is parsed, stored and checked once."""

    def __init__(self, media: MediaConfig, check: CheckLevel) -> None:
        self.media, self.check = media, check
        self._specs: dict[tuple, SampleSpec] = {}
        self._raw: dict[Any, SampleSpec] = {}
        self._errors: dict[int, InputError | bool | None] = {}
        self._by_id: dict[int, SampleSpec] = {}  # by id() of interned specs (kept alive)

    def __call__(self, spec: SampleSpec) -> SampleSpec:
        if self._by_id.get(id(spec)) is spec:  # already interned: skip building its key
            return spec
        key = (*spec.key(), spec.id, spec.target)
        hit = self._specs.setdefault(key, spec)
        self._by_id[id(hit)] = hit
        return hit

    def build(self, raw: Any, make: Any) -> SampleSpec:
        """``make()`` once per distinct raw cell tuple (unhashable cells are built every time)."""
        try:
            hit = self._raw.get(raw)
        except TypeError:
            return self(make())
        if hit is None:
            hit = self._raw[raw] = self(make())
        return hit

    def validate(self, spec: SampleSpec, dataset: str, row: int | str, *, allow_empty: bool = False) -> None:
        """Check an *interned* spec (the cache is keyed by object identity, safe because ``self`` keeps every
        interned spec alive). ``allow_empty`` accepts a sample with nothing to embed (a blank answer option is
        still a candidate)."""
        sid = id(spec)
        if sid not in self._errors:
            if spec.is_empty:
                self._errors[sid] = True
            else:
                try:
                    spec.check(self.media, self.check)
                    self._errors[sid] = None
                except InputError as e:
                    self._errors[sid] = e
        err = self._errors[sid]
        if err is True and not allow_empty:
            raise InputError("empty sample: no text and no media", dataset=dataset, row=row, reason=EMPTY)
        if isinstance(err, InputError):
            raise err.at(dataset=dataset, row=row)


# ---------------------------------------------------------------- lazy containers


class LazySamples(Sequence[Sample]):
    """A sequence of samples decoded on access (``list(x)`` decodes all). Decoding errors become
    :class:`InputError` naming the dataset, the source row and the file."""

    def __init__(self, specs: Sequence[SampleSpec], media: MediaConfig, dataset: str = "",
                 rows: Sequence[int | str] | int | None = None) -> None:
        self.specs = list(specs)
        self.media, self.dataset = media, dataset
        self._rows = rows

    def __len__(self) -> int:
        return len(self.specs)

    def row_of(self, i: int) -> int | str:
        """The source row of sample ``i`` (an index, or ``"corpus 3"`` style for multi-table sets)."""
        if self._rows is None:
            return i
        return self._rows if isinstance(self._rows, int) else self._rows[i]

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...
    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        try:
            return self.specs[i].load(self.media)
        except InputError as e:
            raise e.at(dataset=self.dataset, row=self.row_of(i)) from e

    def __repr__(self) -> str:
        return f"LazySamples({self.dataset!r}, n={len(self)})"


@dataclass
class TrainPair:
    """One contrastive training example; ``negative`` is an optional hard negative."""

    query: Sample
    positive: Sample
    negative: Sample | None = None
    dataset: str = ""


@dataclass(frozen=True)
class TrainPairSpec:
    query: SampleSpec
    positive: SampleSpec
    negative: SampleSpec | None
    dataset: str
    row: int

    def load(self, media: MediaConfig) -> TrainPair:
        try:
            return TrainPair(
                query=self.query.load(media),
                positive=self.positive.load(media),
                negative=self.negative.load(media) if self.negative else None,
                dataset=self.dataset,
            )
        except InputError as e:
            raise e.at(dataset=self.dataset, row=self.row) from e


class TrainSet(Sequence[TrainPair]):
    """Training pairs of one source dataset, decoded on access."""

    def __init__(self, name: str, specs: list[TrainPairSpec], media: MediaConfig, skipped: SkipLog) -> None:
        self.name, self.specs, self.media, self.skipped = name, specs, media, skipped

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> TrainPair:  # type: ignore[override]
        return self.specs[i].load(self.media)

    def __repr__(self) -> str:
        return f"TrainSet({self.name!r}, n={len(self)}, skipped={self.skipped.as_dict()})"


class ConcatTrainSets(Sequence[TrainPair]):
    """Several :class:`TrainSet` behind one index space, in the order :class:`MixtureSampler` uses."""

    def __init__(self, sets: Sequence[TrainSet]) -> None:
        self.sets = list(sets)
        names = [s.name for s in self.sets]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate training set names: {names}")
        self.offsets = np.cumsum([0] + [len(s) for s in self.sets])

    @property
    def sizes(self) -> dict[str, int]:
        return {s.name: len(s) for s in self.sets}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> TrainPair:  # type: ignore[override]
        d = int(np.searchsorted(self.offsets, i, side="right")) - 1
        if not 0 <= d < len(self.sets):
            raise IndexError(i)
        return self.sets[d][i - int(self.offsets[d])]

    def sampler(self, batch_size: int, *, weights: Mapping[str, float] | None = None, seed: int = 0,
                num_batches: int | None = None) -> MixtureSampler:
        return MixtureSampler(self.sizes, batch_size, weights=weights, seed=seed, num_batches=num_batches)


@dataclass
class EvalLocal:
    """Rows whose query ranks the row's own candidates (MMEB image/video eval).

    Candidates carry *names* (the reference harness's ``cand_names``: the label text, the image path, the clip
    folder, ...): a name is embedded once per dataset (first occurrence) and every candidate with a relevant
    name counts as relevant. Without explicit names, a candidate's name is its content and candidate 0 of each
    row is the one positive. ``corpus`` holds extra named candidates that exist only for global ranking (the
    label set of a video classification set).
    """

    dataset: str
    queries: LazySamples
    candidates: list[LazySamples]
    rows: list[int]
    skipped: SkipLog
    cand_names: list[list[str]] | None = None
    labels: list[dict[str, float]] | None = None
    corpus: list[tuple[str, SampleSpec]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.queries)

    def names(self, i: int) -> list[str]:
        if self.cand_names is not None:
            return self.cand_names[i]
        return [_content_name(s) for s in self.candidates[i].specs]

    def label(self, i: int) -> dict[str, float]:
        return self.labels[i] if self.labels is not None else {self.names(i)[0]: 1.0}

    def dedup_candidates(self) -> tuple[LazySamples, list[np.ndarray], list[str]]:
        """Distinct candidates by name (first occurrence, rows in order then ``corpus``), per row the indices
        into them, and the names: a 1000-label classification set encodes 1000 candidates, not 1000 x 1000."""
        index: dict[str, int] = {}
        unique: list[SampleSpec] = []
        first_row: list[int] = []
        per_row: list[np.ndarray] = []
        for i, (row, cands) in enumerate(zip(self.rows, self.candidates, strict=True)):
            ids = np.empty(len(cands), dtype=np.int64)
            for j, (name, spec) in enumerate(zip(self.names(i), cands.specs, strict=True)):
                if name not in index:
                    index[name] = len(unique)
                    unique.append(spec)
                    first_row.append(row)
                ids[j] = index[name]
            per_row.append(ids)
        for name, spec in self.corpus:
            if name not in index:
                index[name] = len(unique)
                unique.append(spec)
                first_row.append(-1)
        return LazySamples(unique, self.queries.media, self.dataset, first_row), per_row, list(index)

    def to_global(self) -> EvalGlobal:
        """The same queries ranked against every distinct candidate (the reference's ``eval_type: global``):
        corpus = all names in first-occurrence order, relevant = each row's label names."""
        corpus, _, names = self.dedup_candidates()
        qids = [str(r) for r in self.rows]
        return EvalGlobal(dataset=self.dataset, queries=self.queries, query_ids=qids, corpus=corpus,
                          corpus_ids=names, qrels={q: self.label(i) for i, q in enumerate(qids)},
                          skipped=self.skipped)


def _content_name(spec: SampleSpec) -> str:
    return repr(spec.key())


@dataclass
class EvalGlobal:
    """Queries ranked over one shared corpus (ViDoRe/BEIR, video retrieval and classification);
    ``qrels[query_id][corpus_id] = graded relevance``."""

    dataset: str
    queries: LazySamples
    query_ids: list[str]
    corpus: LazySamples
    corpus_ids: list[str]
    qrels: dict[str, dict[str, float]]
    skipped: SkipLog
    n_filtered: int = 0
    """Queries left out on purpose (``language=`` filter), not errors."""

    def __len__(self) -> int:
        return len(self.queries)


# ---------------------------------------------------------------- the one read loop


def read_rows(rows: Iterable[dict[str, Any]], parse: Callable[[dict[str, Any], int], T | None], *, dataset: str,
              file: str | Path, on_error: OnError, log: SkipLog, what: str = "", limit: int | None = None,
              progress: bool | None = None) -> list[tuple[int, T]]:
    """The loop every reader runs: ``parse(row, idx)`` each table row into an item (``None``: leave the row out
    silently, e.g. a language filter), turning malformed rows and unusable media into :class:`InputError`
    naming dataset, row (``"<what> <idx>"``) and file, raised or counted per ``on_error``; stops after
    ``limit`` items. Returns ``(row index, item)`` pairs."""
    out: list[tuple[int, T]] = []
    label = f"read {dataset} {what}".rstrip()
    it = iter(_progress(rows, label, progress))
    idx = -1
    while limit is None or len(out) < limit:
        try:
            row = next(it)
        except StopIteration:
            break
        except InputError as e:
            raise e.at(dataset=dataset) from e
        idx += 1
        where: int | str = f"{what} {idx}" if what else idx
        try:
            try:
                item = parse(row, idx)
            except InputError:
                raise
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
                raise InputError(f"malformed {what + ' ' if what else ''}row ({type(e).__name__}: {e})",
                                 reason=BAD_ROW) from e
        except InputError as e:
            log.handle(e.at(dataset=dataset, row=where, file=file), on_error)
            continue
        if item is not None:
            out.append((idx, item))
    return out


# ---------------------------------------------------------------- tables


def _table_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in TABLE_EXTENSIONS), key=lambda p: p.name)
        if not files:
            raise FileNotFoundError(f"{path}: no .jsonl/.parquet/.tsv files in folder")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: table not found")
    return [path]


def iter_table(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL / JSON-list / Parquet / TSV / CSV file, or of every such file in a folder (shards,
    in name order). The format is picked by extension. A file that cannot be read (truncated Parquet,
    invalid JSON) raises :class:`InputError` naming it."""
    for f in _table_files(Path(path)):
        try:
            yield from _iter_file(f)
        except InputError:
            raise
        except (OSError, ValueError, UnicodeDecodeError) as e:  # pyarrow's errors subclass these
            raise InputError(f"cannot read table ({type(e).__name__}: {e})", file=f, reason="bad_table") from e


def _iter_file(f: Path) -> Iterator[dict[str, Any]]:
    ext = f.suffix.lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    elif ext in (".tsv", ".csv"):
        with open(f, newline="", encoding="utf-8") as fh:
            yield from csv.DictReader(fh, delimiter="\t" if ext == ".tsv" else ",")
    elif ext == ".json":
        data = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{f}: a .json table must hold a list of row objects")
        yield from data
    else:
        with open(f, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"line {lineno}: invalid JSON ({e})", file=f, reason="bad_table") from e


def read_table(path: str | Path) -> list[dict[str, Any]]:
    return list(iter_table(path))


def _find_table(folder: Path, name: str) -> Path:
    """``folder/name.{jsonl,parquet,...}`` or a shard folder ``folder/name/``."""
    for ext in TABLE_EXTENSIONS:
        if (folder / f"{name}{ext}").is_file():
            return folder / f"{name}{ext}"
    if (folder / name).is_dir():
        return folder / name
    raise FileNotFoundError(f"{folder}: no '{name}' table ({'/'.join(TABLE_EXTENSIONS)} file or folder)")


def _media(media: MediaConfig | None, root: str | Path | None, default_root: Path) -> MediaConfig:
    """``root`` argument > ``media.root`` > the table's folder."""
    media = media or MediaConfig()
    root = root if root is not None else (media.root if media.root is not None else default_root)
    return replace(media, root=root)


def _dataset_name(path: Path, dataset: str | None) -> str:
    if dataset:
        return dataset
    return path.name if path.is_dir() else path.stem


def _progress(it: Iterable, desc: str, progress: bool | None) -> Iterable:
    return tqdm(it, desc=desc, unit="row", disable=None if progress is None else not progress, leave=False)


# ---------------------------------------------------------------- generic sides


def side_from_json(x: Any, *, id: str = "") -> SampleSpec:
    """A generic-format side: a plain string (text only) or an object with ``text``, ``instruction``,
    ``images`` / ``image``, ``video``, ``pdf`` + ``page``, ``id``, ``target``."""
    if x is None:
        return SampleSpec()
    if isinstance(x, str):
        return make_spec(text=x, id=id)
    if not isinstance(x, dict):
        raise TypeError(f"a side must be a string or an object, got {type(x).__name__}")
    images = _image_list(x.get("images")) + _image_list(x.get("image"))
    if x.get("pdf"):
        pages = x.get("page", 0)
        for p in pages if isinstance(pages, list) else [pages]:
            images.append(PdfPage(str(x["pdf"]), int(p)))
    return make_spec(text=x.get("text"), instruction=x.get("instruction"), images=images, video=x.get("video"),
                     id=_str(x.get("id") or id), target=x.get("target"))


# ---------------------------------------------------------------- training


def _train_row(row: dict[str, Any], idx: int) -> tuple[SampleSpec, SampleSpec, SampleSpec | None]:
    if "qry" in row:  # MMEB-train (an optional ``ntp_target`` column is applied by ``_with_targets``)
        def side(t: str, p: str) -> SampleSpec:
            return make_spec(text=row.get(t), images=_image_list(row.get(f"{p}_image_path")),
                             video=row.get(f"{p}_video_path"))

        q, pos = side("qry", "qry"), side("pos_text", "pos")
        neg = side("neg_text", "neg") if (row.get("neg_text") or row.get("neg_image_path")) else None
        return q, pos, neg
    if "query" in row and "positive" in row:  # generic
        neg = side_from_json(row["negative"]) if row.get("negative") else None
        return side_from_json(row["query"], id=_str(row.get("id"))), side_from_json(row["positive"]), neg
    raise KeyError(f"row {idx}: neither MMEB-train columns (qry, pos_text, ...) nor generic (query, positive)")


def _with_targets(q: SampleSpec, p: SampleSpec, ntp_side: NtpSide,
                  explicit: str | None = None) -> tuple[SampleSpec, SampleSpec]:
    """Attach generative targets: the query's BToks generate the positive's text (``positive``), the
    candidate's BToks the query's text (``query``). Explicit targets win: a side's own ``target``, then the
    row's ``ntp_target`` column (the clean text, without the instruction the other side's text carries)."""
    if ntp_side in ("positive", "both") and q.target is None:
        text = explicit if explicit and ntp_side == "positive" else plain_text(p.text)
        if text:
            q = replace(q, target=text)
    if ntp_side in ("query", "both") and p.target is None:
        text = explicit if explicit and ntp_side == "query" else plain_text(q.text)
        if text:
            p = replace(p, target=text)
    return q, p


def read_train(
    path: str | Path,
    *,
    dataset: str | None = None,
    root: str | Path | None = None,
    media: MediaConfig | None = None,
    ntp_side: NtpSide = "none",
    on_error: OnError = "raise",
    check: CheckLevel = "header",
    limit: int | None = None,
    progress: bool | None = None,
    prompt_style: str = "btoks",
) -> TrainSet:
    """Read MMEB-train rows (``qry``, ``qry_image_path``, ``pos_text``, ``pos_image_path``, ``neg_text``,
    ``neg_image_path``) or generic ``{"query", "positive", "negative"}`` rows into a :class:`TrainSet`.

    Media paths are relative to ``root`` (default: the table's folder). ``ntp_side`` fills ``Sample.target``
    from the other side's text (markers removed) for the generative loss. ``prompt_style="authors"`` renders
    MMEB-train text as the authors' loader does for this subset (``btoks.data.authors_prompts``).
    """
    if prompt_style not in ("btoks", "authors"):
        raise ValueError(f"prompt_style must be btoks|authors, not {prompt_style!r}")
    if ntp_side not in ("positive", "query", "both", "none"):
        raise ValueError(f"ntp_side must be positive|query|both|none, not {ntp_side!r}")
    path = Path(path)
    name = _dataset_name(path, dataset)
    media = _media(media, root, path if path.is_dir() else path.parent)
    log, interner = SkipLog(name), _Interner(media, check)

    def parse(row: dict[str, Any], idx: int) -> TrainPairSpec:
        if prompt_style == "authors" and "qry" in row:
            from btoks.data.authors_prompts import render_mmeb_train

            row = render_mmeb_train(row, name)
        q, p, n = _train_row(row, idx)
        q, p = _with_targets(q, p, ntp_side, _str(row.get("ntp_target")).strip() or None)
        q, p, n = interner(q), interner(p), (interner(n) if n else None)
        for s in (q, p) if n is None else (q, p, n):
            interner.validate(s, name, idx)
        return TrainPairSpec(q, p, n, name, idx)

    specs = [t for _, t in read_rows(iter_table(path), parse, dataset=name, file=path, on_error=on_error, log=log,
                                     limit=limit, progress=progress)]
    return TrainSet(name, specs, media, log)


# ---------------------------------------------------------------- eval: local


def _as_list(x: Any, n: int, what: str) -> list[Any]:
    if x is None:
        return [None] * n
    if isinstance(x, str):
        return [x] * n
    out = list(x)
    if len(out) != n:
        raise ValueError(f"{what} has {len(out)} entries but tgt_text has {n}")
    return out


def _pick_instruction(row_inst: Any, text: Any, given: str | None, override: bool) -> str:
    """Row instruction vs. the one given (registry/manifest): ``override`` forces the given one; otherwise it
    only fills rows without an instruction, and not when the row text already starts with it (MMEB-V1
    style rows carry the instruction inline in ``qry_text``)."""
    row_inst = _str(row_inst)
    if given is None or (row_inst and not override):
        return row_inst
    if override:
        return given
    head = given.strip().rstrip(":.").lower()
    return "" if head and plain_text(_str(text)).lower().startswith(head) else given


def _eval_row(row: dict[str, Any], q_inst: str | None, t_inst: str | None, override: bool,
              interner: _Interner) -> tuple[SampleSpec, list[SampleSpec]]:
    """Query and candidate specs of one eval row, interned (candidates are built once per distinct cell)."""
    if "qry_text" in row or "qry_inst" in row:  # MMEB-V2 image / video eval
        q = interner(make_spec(
            text=row.get("qry_text"),
            instruction=_pick_instruction(row.get("qry_inst"), row.get("qry_text"), q_inst, override),
            images=_image_list(row.get("qry_img_path")),
            video=row.get("qry_video_path"),
        ))
        texts = row.get("tgt_text")
        if isinstance(texts, str) or texts is None:
            raise ValueError("tgt_text must be a list of candidate texts")
        texts = list(texts)
        n = len(texts)
        insts = _as_list(row.get("tgt_inst"), n, "tgt_inst")
        imgs = _as_list(row.get("tgt_img_path"), n, "tgt_img_path")
        vids = _as_list(row.get("tgt_video_path"), n, "tgt_video_path")

        def cand(t: Any, i: Any, im: Any, v: Any) -> SampleSpec:
            raw = (t, i, tuple(im) if isinstance(im, list) else im, v)
            return interner.build(raw, lambda: make_spec(
                text=t, instruction=_pick_instruction(i, t, t_inst, override), images=_image_list(im), video=v))

        return q, [cand(*c) for c in zip(texts, insts, imgs, vids, strict=True)]
    if "query" in row and "candidates" in row:  # generic
        q = side_from_json(row["query"], id=_str(row.get("id")))
        q = interner(replace(q, instruction=_pick_instruction(q.instruction, q.text, q_inst, override)))

        def gcand(c: Any) -> SampleSpec:
            def make() -> SampleSpec:
                s = side_from_json(c)
                return replace(s, instruction=_pick_instruction(s.instruction, s.text, t_inst, override))
            return interner.build(("generic", c), make) if isinstance(c, str) else interner(make())

        return q, [gcand(c) for c in row["candidates"]]
    raise KeyError("neither MMEB eval columns (qry_text, tgt_text, ...) nor generic (query, candidates)")


def read_eval_local(
    path: str | Path,
    *,
    dataset: str | None = None,
    root: str | Path | None = None,
    media: MediaConfig | None = None,
    query_instruction: str | None = None,
    target_instruction: str | None = None,
    override_instructions: bool = False,
    on_error: OnError = "raise",
    check: CheckLevel = "header",
    limit: int | None = None,
    progress: bool | None = None,
) -> EvalLocal:
    """Read MMEB-V2 image/video eval rows (``qry_inst``, ``qry_text``, ``qry_img_path``, ``qry_video_path``,
    ``tgt_inst``, ``tgt_text``, ``tgt_img_path``, ``tgt_video_path``) or generic ``{"query", "candidates"}``.

    ``query_instruction`` / ``target_instruction`` fill rows that carry none (``override_instructions``
    replaces the rows' own instead). A row whose query or any candidate
    is unusable is raised or skipped whole: ranking it over a partial candidate list would inflate hit@1.
    """
    path = Path(path)
    name = _dataset_name(path, dataset)
    media = _media(media, root, path if path.is_dir() else path.parent)
    log, interner = SkipLog(name), _Interner(media, check)

    def parse(row: dict[str, Any], idx: int) -> LocalRow:
        q, cs = _eval_row(row, query_instruction, target_instruction, override_instructions, interner)
        return LocalRow(q, cs).validated(interner, name, idx)

    rows = read_rows(iter_table(path), parse, dataset=name, file=path, on_error=on_error, log=log, limit=limit,
                     progress=progress)
    return build_local(name, media, log, rows)


@dataclass
class LocalRow:
    """One parsed eval row: query, candidates, optionally their names and the relevant names (grades)."""

    query: SampleSpec
    candidates: list[SampleSpec]
    names: list[str] | None = None
    labels: dict[str, float] | None = None

    def validated(self, interner: _Interner, dataset: str, idx: int, *, allow_empty: bool = False) -> LocalRow:
        """Intern and check every side; a row with an unusable side is unusable whole (ranking over a partial
        candidate list would inflate hit@1). ``allow_empty`` keeps blank candidates (OK-VQA's blank answers).
        An answer that names no candidate is kept, as in the reference: the row then scores 0."""
        if not self.candidates:
            raise InputError("row has no candidates", reason=BAD_ROW)
        if self.names is not None and len(self.names) != len(self.candidates):
            raise InputError(f"{len(self.names)} candidate names for {len(self.candidates)} candidates")
        self.query = interner(self.query)
        self.candidates = [interner(c) for c in self.candidates]
        interner.validate(self.query, dataset, idx)
        for spec in self.candidates:
            interner.validate(spec, dataset, idx, allow_empty=allow_empty)
        return self


def build_local(name: str, media: MediaConfig, log: SkipLog, rows: Sequence[tuple[int, LocalRow]],
                corpus: Sequence[tuple[str, SampleSpec]] = ()) -> EvalLocal:
    """An :class:`EvalLocal` from parsed rows (names/labels kept only when every row has them)."""
    idx = [i for i, _ in rows]
    named = bool(rows) and all(r.names is not None for _, r in rows)
    return EvalLocal(
        dataset=name,
        queries=LazySamples([r.query for _, r in rows], media, name, idx),
        candidates=[LazySamples(r.candidates, media, name, i) for i, r in rows],
        rows=idx,
        skipped=log,
        cand_names=[list(r.names or ()) for _, r in rows] if named else None,
        labels=[dict(r.labels or {r.names[0]: 1.0}) for _, r in rows] if named else None,  # type: ignore[index]
        corpus=list(corpus),
    )


# ---------------------------------------------------------------- eval: global (visual documents)


def _corpus_spec(row: dict[str, Any], instruction: str) -> SampleSpec:
    img = row.get("image")
    if img is None and row.get("pdf"):
        ref: ImageRef | None = PdfPage(str(row["pdf"]), int(row.get("page") or 0))
    elif img is None and row.get("image_path"):
        ref = str(row["image_path"])
    else:
        ref = _image_ref(img)
    if ref is None:
        raise ValueError("corpus row has no 'image' (bytes, {'bytes'}, path) or 'pdf' + 'page'")
    return make_spec(text=row.get("text"), instruction=instruction, images=[ref],
                     id=_str(row.get("corpus-id")))


def read_visdoc(
    folder: str | Path,
    *,
    dataset: str | None = None,
    root: str | Path | None = None,
    media: MediaConfig | None = None,
    query_instruction: str = "",
    target_instruction: str = "",
    language: str | None = None,
    on_error: OnError = "raise",
    check: CheckLevel = "header",
    limit: int | None = None,
    progress: bool | None = None,
) -> EvalGlobal:
    """Read a ViDoRe/BEIR folder with ``queries``, ``corpus`` and ``qrels`` tables.

    Corpus pages are PNG bytes, ``{"bytes": ...}`` structs, paths, or ``pdf`` + ``page`` (rendered with
    pypdfium2). Unusable corpus pages are raised or skipped (counted); queries left with no relevant page
    are then dropped and counted as ``no_qrels`` in either mode, since they cannot be scored.
    ``language`` keeps only queries of that language (ViDoRe v2 multilingual splits).
    """
    folder = Path(folder)
    name = _dataset_name(folder, dataset)
    media = _media(media, root, folder)
    log, interner = SkipLog(name), _Interner(media, check)
    common = {"dataset": name, "on_error": on_error, "log": log, "progress": progress}

    seen: set[str] = set()  # every corpus id in the table, usable or not (qrels may name skipped pages)

    corpus_row_of: dict[str, str] = {}

    def corpus_row(row: dict[str, Any], idx: int) -> tuple[str, SampleSpec]:
        cid = _str(row["corpus-id"])
        if cid in seen:
            raise InputError(f"duplicate corpus-id {cid!r}", reason=BAD_ROW)
        seen.add(cid)
        corpus_row_of[cid] = f"corpus {idx}"
        spec = interner(_corpus_spec(row, target_instruction))
        interner.validate(spec, name, f"corpus {idx}")
        return cid, spec

    table = _find_table(folder, "corpus")
    corpus = dict(t for _, t in read_rows(iter_table(table), corpus_row, file=table, what="corpus", **common))

    qrels: dict[str, dict[str, float]] = {}

    def qrels_row(row: dict[str, Any], idx: int) -> None:
        qid, cid = _str(row["query-id"]), _str(row["corpus-id"])
        raw = row.get("score", 1)
        score = float(1 if raw in ("", None) else raw)
        if cid not in seen:
            raise InputError(f"corpus-id {cid!r} (query {qid!r}) is not in the corpus", reason="unknown_id")
        if score > 0:  # BEIR: 0 / negative grades are judged non-relevant; repeated pairs keep the best grade
            rel = qrels.setdefault(qid, {})
            rel[cid] = max(rel.get(cid, 0.0), score)

    table = _find_table(folder, "qrels")
    read_rows(iter_table(table), qrels_row, file=table, what="qrels", **common)

    n_filtered = 0

    def query_row(row: dict[str, Any], idx: int) -> tuple[str, SampleSpec] | None:
        nonlocal n_filtered
        if language is not None and row.get("language") != language:
            n_filtered += 1
            return None
        qid = _str(row["query-id"])
        spec = interner(make_spec(text=row.get("query"), instruction=query_instruction, id=qid))
        interner.validate(spec, name, f"query {idx}")
        if not any(c in corpus for c in qrels.get(qid, {})):  # cannot be scored: dropped and counted either way
            log.add(InputError(f"query {qid!r} has no relevant page in the corpus", reason=NO_QRELS,
                               dataset=name, row=f"query {idx}", file=table))
            return None
        return qid, spec

    table = _find_table(folder, "queries")
    queries = read_rows(iter_table(table), query_row, file=table, what="query", limit=limit, **common)
    # Candidate order as the reference harness builds it (each query's relevant pages, then the rest of the
    # corpus): with the "reference" tie policy, tied scores then rank in the same order.
    order = list(dict.fromkeys([*(c for _, (q, _) in queries for c in qrels[q] if c in corpus), *corpus]))
    q_ids = [q for _, (q, _) in queries]
    return EvalGlobal(
        dataset=name,
        queries=LazySamples([sp for _, (_, sp) in queries], media, name, [f"query {i}" for i, _ in queries]),
        query_ids=q_ids,
        corpus=LazySamples([corpus[c] for c in order], media, name, [corpus_row_of[c] for c in order]),
        corpus_ids=order,
        qrels={q: {c: g for c, g in qrels[q].items() if c in corpus} for q in q_ids},
        skipped=log,
        n_filtered=n_filtered,
    )


def read_eval(spec: Any, data_root: str | Path, **kwargs: Any) -> EvalLocal | EvalGlobal:
    """Read the evaluation data of a registry ``DatasetSpec`` (anything with ``name``, ``format``, ``path``,
    ``query_instruction``, ``target_instruction``): ``path`` is relative to ``data_root`` (default: the
    dataset name) and is also the media root unless ``root=`` or the spec's ``media_root`` is given."""
    base = Path(data_root) / (getattr(spec, "path", None) or spec.name)
    if getattr(spec, "media_root", None):
        kwargs.setdefault("root", Path(data_root) / spec.media_root)
    fmt = getattr(spec, "format", "local")
    if fmt == "visdoc":
        return read_visdoc(base, dataset=spec.name, query_instruction=spec.query_instruction,
                           target_instruction=spec.target_instruction, **kwargs)
    if fmt != "local":
        raise ValueError(f"{spec.name}: unknown format {fmt!r} (expected 'local' or 'visdoc')")
    table = base
    if base.is_dir():
        try:
            table = _find_table(base, "test")
        except FileNotFoundError:
            table = base
    kwargs.setdefault("root", base if base.is_dir() else base.parent)
    return read_eval_local(table, dataset=spec.name, query_instruction=spec.query_instruction or None,
                           target_instruction=spec.target_instruction or None, **kwargs)
