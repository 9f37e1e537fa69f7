"""A FAISS index over folders of images, PDFs, videos and text files, built incrementally, written atomically.

Layout of an index directory::

    INDEX/CURRENT            name of the live version (replaced atomically with os.replace)
    INDEX/v-<time>-<rand>/   header.json (model, dim, count, index type), meta.jsonl (one line per vector,
                             same order as the FAISS ids), index.faiss

A build writes a complete new version next to the live one and only then flips ``CURRENT``, so a crash at any
point leaves the previous index readable; the previous version is kept one more round for readers that opened
it just before the flip. Vectors are L2-normalised, so inner product (``METRIC_INNER_PRODUCT``) is cosine.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from btoks.data.errors import InputError
from btoks.data.media import DEFAULT_MAX_PIXELS, DEFAULT_NUM_FRAMES, KNOWN_EXTENSIONS, kind_of, pdf_num_pages
from btoks.encode import EncodeOptions, encode_items
from btoks.errors import BToksError
from btoks.fsio import fsync_dir, fsync_file

if TYPE_CHECKING:
    import faiss

    from btoks.model import BToksModel

log = logging.getLogger(__name__)

IndexType = Literal["auto", "flat", "hnsw", "ivf"]
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
AUTO_APPROXIMATE_FROM = 100_000
"""``auto`` builds an exact ``flat`` index below this many vectors and HNSW from here on: at 100k × 384-1,536
dims exact search still answers a single query in milliseconds, at 1M it is ~500× slower than HNSW
(docs/benchmarks.md, table 5)."""
RECALL_SAMPLE = 500
"""Stored vectors used as queries when estimating an approximate index's recall@10."""
FORMAT, VERSION = "btoks-index", 1
CURRENT, HEADER, META, FAISS_FILE, LOCK = "CURRENT", "header.json", "meta.jsonl", "index.faiss", ".lock"
PROBE_TEXT = "btoks index probe: a photo of a cat sitting on a red sofa."
PROBE_MIN_COSINE = 0.98
"""Below this, the probe text embeds differently than at build time: a different model (or weights)."""


class BToksIndexError(BToksError, RuntimeError):
    """The index directory is missing, corrupt, locked, or does not match the model used with it."""


@dataclass
class IndexParams:
    """FAISS structure knobs; stored in the header so search uses the same settings as the build."""

    index_type: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None
    """IVF lists; ``None``: ``min(4·√n, n/39)`` (FAISS wants ≥ 39 training points per list)."""
    nprobe: int | None = None
    """IVF lists visited per query; ``None``: ``max(16, nlist/8)``."""
    trained_on: int = 0
    recall_at_10: float | None = None
    """Estimated when an approximate index is built (``estimate_recall``); ``None`` for exact search."""


@dataclass
class BuildReport:
    """What a ``build_index`` run did (also printed by ``btoks index``)."""

    path: str
    count: int
    added: int = 0
    removed: int = 0
    unchanged_files: int = 0
    new_files: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    rebuilt: bool = False
    written: bool = True
    index_type: str = ""
    recall_at_10: float | None = None
    """Estimated recall@10 of an approximate index against exact search (``None``: exact)."""


@dataclass
class Hit:
    """One search result. ``score`` is the cosine similarity (inner product of normalised vectors)."""

    rank: int
    score: float
    id: str
    source: str
    modality: str
    page: int | None = None
    chunk: int | None = None
    preview: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


# ------------------------------------------------------------------------------------------------ discovery


def _skip_name(name: str) -> bool:
    return name.startswith(".")


def discover(sources: Iterable[str | Path]) -> list[Path]:
    """Supported files under ``sources`` (files or folders, recursive, hidden entries skipped), sorted.

    Nothing outside a named folder is read: symlinked folders are not followed (no cycles either), and a
    symlinked file is kept only when its target lies inside the folder (``ln -s /etc/passwd leak.txt`` would
    otherwise put that file's text into previews served by ``/search``).
    """
    found: dict[Path, None] = {}
    for src in sources:
        root = Path(src).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or folder")
        if root.is_file():
            if kind_of(root) is None:
                raise ValueError(
                    f"{root}: unsupported file type; expected one of {', '.join(sorted(KNOWN_EXTENSIONS))}"
                )
            found[root.resolve()] = None
            continue
        base = root.resolve()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not _skip_name(d))
            for name in sorted(filenames):
                p = Path(dirpath, name)
                if _skip_name(name) or kind_of(p) is None or not p.is_file():
                    continue
                target = p.resolve()
                if not target.is_relative_to(base):
                    log.warning("%s: skipped, a symlink to %s outside the indexed folder %s", p, target, base)
                    continue
                found[target] = None
    return sorted(found)


def modality_of(path: Path) -> str:
    """The index's modality tag of a discovered file (a PDF is indexed page by page)."""
    kind = kind_of(path) or "text"
    return "pdf_page" if kind == "pdf" else kind


def chunk_text(text: str, chunk_chars: int | None, overlap: int = 0) -> list[tuple[int, int]]:
    """(start, end) character spans of at most ``chunk_chars``, cut at a paragraph, line or word boundary."""
    if not chunk_chars or len(text) <= chunk_chars:
        return [(0, len(text))] if text.strip() else []
    spans, start = [], 0
    while start < len(text):
        end = min(len(text), start + chunk_chars)
        if end < len(text):
            window = text[start:end]
            for sep in ("\n\n", "\n", ". ", " "):
                cut = window.rfind(sep)
                if cut > chunk_chars // 2:
                    end = start + cut + len(sep)
                    break
        if text[start:end].strip():
            spans.append((start, end))
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return spans


def check_chunking(chunk_chars: int | None, overlap: int) -> None:
    """Refuse an overlap that would make chunking crawl one character at a time (300 files → 50k chunks)."""
    if chunk_chars is not None and chunk_chars < 1:
        raise ValueError(f"chunk size must be >= 1 character, got {chunk_chars}")
    if overlap < 0 or (chunk_chars and overlap >= chunk_chars):
        raise ValueError(f"chunk overlap must be >= 0 and smaller than the chunk size ({chunk_chars}), got {overlap}")


def _file_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _entries(
    path: Path, *, num_frames: int, chunk_chars: int | None, chunk_overlap: int, max_text_chars: int
) -> list[tuple[dict[str, Any], Any]]:
    """(metadata, encode input) for every vector a file contributes."""
    mtime_ns, size = _file_key(path)
    base = {"source": str(path), "mtime_ns": mtime_ns, "size": size}
    kind = modality_of(path)
    if kind == "image":
        return [({**base, "id": str(path), "modality": kind}, path)]
    if kind == "video":
        return [
            (
                {**base, "id": str(path), "modality": kind, "frames": num_frames},
                {"video": path, "frames": num_frames},
            )
        ]
    if kind == "pdf_page":
        return [
            ({**base, "id": f"{path}#page={p}", "modality": kind, "page": p}, {"pdf": path, "page": p})
            for p in range(pdf_num_pages(path))
        ]
    with path.open(encoding="utf-8", errors="replace") as f:
        text = f.read(max_text_chars)
    spans = chunk_text(text, chunk_chars, chunk_overlap)
    if not spans:
        raise ValueError(f"{path}: empty text file")
    single = len(spans) == 1 and not chunk_chars
    out = []
    for i, (a, b) in enumerate(spans):
        meta = {
            **base,
            "id": str(path) if single else f"{path}#chunk={i}",
            "modality": kind,
            "preview": " ".join(text[a:b].split())[:200],
        }
        if not single:
            meta.update(chunk=i, start=a, end=b)
        out.append((meta, text[a:b]))
    return out


# ------------------------------------------------------------------------------------------------ FAISS


def resolve_index_type(index_type: str, n: int) -> str:
    """``auto``: exact below ``AUTO_APPROXIMATE_FROM`` vectors, HNSW above; other types pass through."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; expected one of {', '.join(INDEX_TYPES)}")
    if index_type != "auto":
        return index_type
    return "flat" if n < AUTO_APPROXIMATE_FROM else "hnsw"


def estimate_recall(index: faiss.Index, vectors: np.ndarray, params: IndexParams, k: int = 10,
                    sample: int = RECALL_SAMPLE, seed: int = 0) -> float:
    """Recall@k of ``index`` against exact search, with ``sample`` stored vectors as queries.

    Each query's own row is dropped from both result lists (a real query is not in the corpus, and finding
    itself would flatter the index). Uses the search settings stored in ``params``.
    """
    import faiss

    n = vectors.shape[0]
    if n <= k + 1:
        return 1.0
    rows = np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False)
    queries = np.ascontiguousarray(vectors[rows])
    _, exact = faiss.knn(queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = index.search(queries, k + 1, params=_search_params(index, params, k + 1))
    hits = 0
    for row, e, f in zip(rows, exact, found, strict=True):
        truth = [i for i in e if i != row][:k]
        hits += len(set(truth) & {i for i in f if i != row})
    return hits / (k * len(rows))


def make_faiss_index(vectors: np.ndarray, params: IndexParams) -> faiss.Index:
    """A new index of ``params.index_type`` holding ``vectors`` (n × d float32, already normalised).

    ``auto`` is resolved by size first (and ``params.index_type`` updated); an approximate index gets its
    recall@10 estimated on a sample (``params.recall_at_10``).
    """
    import faiss

    n, d = vectors.shape
    params.index_type = resolve_index_type(params.index_type, n)
    if params.index_type == "flat":
        index = faiss.IndexFlatIP(d)
    elif params.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
    elif params.index_type == "ivf":
        if n == 0:
            raise ValueError("an IVF index needs vectors to train on; index at least one file first")
        nlist = params.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        nlist = min(nlist, n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = params.nprobe or min(nlist, max(16, nlist // 8))
        params.nlist, params.trained_on = nlist, n
        index.make_direct_map()  # lets a later rebuild read vectors back (reconstruct)
    else:
        raise ValueError(
            f"unknown index type {params.index_type!r}; expected one of {', '.join(INDEX_TYPES)}"
        )
    if n:
        index.add(vectors)
    params.recall_at_10 = None if params.index_type == "flat" or not n else \
        estimate_recall(index, vectors, params)
    return index


def all_vectors(index: faiss.Index) -> np.ndarray:
    """Every stored vector, in id order (flat and HNSW store them; IVF keeps a direct map for this)."""
    import faiss

    if index.ntotal == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


def _search_params(index: faiss.Index, params: IndexParams, k: int) -> Any:
    """Per-call search settings (not mutated on the shared index, so concurrent searches cannot race)."""
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=max(params.ef_search, k))
    if faiss.try_extract_index_ivf(index) is not None and params.nprobe:
        return faiss.SearchParametersIVF(nprobe=params.nprobe)
    return None


# ------------------------------------------------------------------------------------------------ reading


def _version_dir(path: Path) -> Path:
    """The live version folder of an index directory (a version folder itself is accepted too)."""
    if (path / HEADER).is_file():
        return path
    pointer = path / CURRENT
    if not pointer.is_file():
        raise BToksIndexError(f"{path}: not a btoks index (no {CURRENT} file); build one with `btoks index`")
    name = pointer.read_text().strip()
    if not name or "/" in name or name.startswith(".") or not (path / name / HEADER).is_file():
        raise BToksIndexError(f"{path}: {CURRENT} points to a missing version {name!r}")
    return path / name


class Index:
    """A loaded index: FAISS structure, per-vector metadata and the header. Load once, search many times."""

    def __init__(
        self, path: Path, header: dict[str, Any], meta: list[dict[str, Any]], index: faiss.Index
    ) -> None:
        self.path, self.header, self.meta, self.faiss = path, header, meta, index
        self.params = IndexParams(**header.get("params", {}))
        self._probe_ok: set[int] = set()

    @classmethod
    def load(cls, path: str | Path) -> Index:
        import faiss

        root = Path(path)
        vdir = _version_dir(root)
        try:
            header = json.loads((vdir / HEADER).read_text())
            if header.get("format") != FORMAT:
                raise BToksIndexError(f"{vdir / HEADER}: not a {FORMAT} header")
            with (vdir / META).open(encoding="utf-8") as f:
                meta = [json.loads(line) for line in f if line.strip()]
            index = faiss.read_index(str(vdir / FAISS_FILE))
        except (OSError, ValueError, RuntimeError) as e:
            raise BToksIndexError(f"{vdir}: cannot read index ({e})") from e
        if index.ntotal != len(meta) or index.ntotal != header.get("count"):
            raise BToksIndexError(
                f"{vdir}: index holds {index.ntotal} vectors but metadata has {len(meta)} rows "
                f"(header count {header.get('count')})"
            )
        return cls(root, header, meta, index)

    @property
    def dim(self) -> int:
        return int(self.header["dim"])

    def __len__(self) -> int:
        return self.faiss.ntotal

    def check_model(self, model: BToksModel, probe: np.ndarray | None = None) -> None:
        """Refuse a model whose embeddings are not comparable with the stored ones (dim or probe mismatch).

        Mixing embedding spaces fails silently otherwise: search still ranks results, just wrongly.
        """
        from btoks.encode import encode

        if id(model) in self._probe_ok:
            return
        if probe is None:
            probe = encode(model, PROBE_TEXT, show_progress_bar=False)
        if probe.shape[0] != self.dim:
            raise BToksIndexError(
                f"{self.path}: index dim {self.dim} but the model embeds to {probe.shape[0]}"
            )
        stored = self.header.get("probe")
        if stored is not None:
            cos = float(np.dot(probe, np.asarray(stored, dtype=np.float32)))
            if cos < PROBE_MIN_COSINE:
                raise BToksIndexError(
                    f"{self.path}: the model does not match the one the index was built with "
                    f"({self.header.get('model')}; probe cosine {cos:.3f} < {PROBE_MIN_COSINE}); "
                    "rebuild the index with this model (btoks index ... --rebuild)"
                )
        self._probe_ok.add(id(model))

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search: (scores, ids), both ``len(queries) × min(k, count)``; ids are rows of ``meta``."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dim {q.shape[1]} != index dim {self.dim}")
        k = min(k, len(self))
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return self.faiss.search(q, k, params=_search_params(self.faiss, self.params, k))

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        """Hits for one query row (FAISS pads with id -1 when fewer than k results exist)."""
        out = []
        for score, i in zip(scores, ids, strict=True):
            if i < 0:
                continue
            m = self.meta[int(i)]
            out.append(
                Hit(
                    rank=len(out) + 1,
                    score=float(score),
                    id=m["id"],
                    source=m["source"],
                    modality=m["modality"],
                    page=m.get("page"),
                    chunk=m.get("chunk"),
                    preview=m.get("preview"),
                )
            )
        return out

    def search(
        self,
        model: BToksModel,
        query_text: str | None = None,
        query_image: Any = None,
        k: int = 10,
        instruction: str | None = None,
        check_model: bool = True,
    ) -> list[Hit]:
        """Embed the query (text, image, or both in one input) with ``encode_query`` and rank the index."""
        from btoks.encode import encode_query

        if check_model:
            self.check_model(model)
        query = _query_input(query_text, query_image)
        vec = encode_query(model, query, instruction=instruction, show_progress_bar=False)
        scores, ids = self.search_vectors(vec[None], k)
        return self.hits(scores[0], ids[0])


def _query_input(query_text: str | None, query_image: Any) -> Any:
    if query_image is None:
        if not query_text:
            raise ValueError("give a query text, a query image, or both")
        return query_text
    image = Path(query_image) if isinstance(query_image, str) else query_image
    return {"text": query_text or "", "image": image}


def search(
    index_dir: str | Path | Index,
    model: BToksModel,
    query_text: str | None = None,
    query_image: Any = None,
    k: int = 10,
    instruction: str | None = None,
) -> list[Hit]:
    """Ranked hits for a text and/or image query (``query_image``: PIL image, path or bytes)."""
    index = index_dir if isinstance(index_dir, Index) else Index.load(index_dir)
    return index.search(model, query_text, query_image, k=k, instruction=instruction)


# ------------------------------------------------------------------------------------------------ writing


@contextlib.contextmanager
def _writer_lock(root: Path) -> Iterator[None]:
    """One writer per index directory (two concurrent builds would each drop the other's additions)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; documented limitation
        yield
        return
    with (root / LOCK).open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise BToksIndexError(f"{root}: another process is writing this index") from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_index(
    root: Path, header: dict[str, Any], meta: Sequence[dict[str, Any]], index: faiss.Index
) -> Path:
    """Write a complete new version, then atomically point ``CURRENT`` at it; returns the version folder.

    Nothing the live version uses is touched before the final ``os.replace``, so an exception or a crash at
    any earlier point leaves the previous index exactly as it was.
    """
    import faiss

    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    name = f"v-{stamp}-{secrets.token_hex(4)}"
    tmp = root / f".tmp-{name}"
    final = root / name
    previous = _live_name(root)
    tmp.mkdir()
    try:
        faiss.write_index(index, str(tmp / FAISS_FILE))
        with (tmp / META).open("w", encoding="utf-8") as f:
            for row in meta:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / HEADER).write_text(json.dumps(header, indent=1) + "\n")
        for file in (FAISS_FILE, META, HEADER):
            fsync_file(tmp / file)
        tmp.rename(final)
        pointer_tmp = root / f".{CURRENT}.{name}"
        pointer_tmp.write_text(name + "\n")
        fsync_file(pointer_tmp)
        os.replace(pointer_tmp, root / CURRENT)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if _live_name(root) != name:
            shutil.rmtree(final, ignore_errors=True)
        for stray in root.glob(f".{CURRENT}.{name}"):
            stray.unlink(missing_ok=True)
        raise
    _cleanup(root, keep={name, previous})
    return final


def _live_name(root: Path) -> str | None:
    try:
        return (root / CURRENT).read_text().strip() or None
    except OSError:
        return None


def _cleanup(root: Path, keep: set[str | None]) -> None:
    """Drop versions older than the previous one and leftovers of crashed writes (we hold the lock)."""
    for p in root.iterdir():
        if p.name.startswith(("v-", ".tmp-v-")) and p.is_dir() and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(f".{CURRENT}.") and p.is_file():
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ building


def _under(path: str, roots: Sequence[Path]) -> bool:
    p = Path(path)
    return any(p == r or p.is_relative_to(r) for r in roots)


def build_index(
    model: BToksModel | str | Path,
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    index_type: IndexType = "auto",
    batch_size: int = 16,
    num_frames: int = DEFAULT_NUM_FRAMES,
    chunk_chars: int | None = None,
    chunk_overlap: int = 0,
    pdf_scale: float = 1.0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    instruction: str | None = None,
    model_path: str | None = None,
    rebuild: bool = False,
    prune: bool = True,
    hnsw_m: int = 32,
    ef_construction: int | None = None,
    ef_search: int | None = None,
    ivf_nlist: int | None = None,
    show_progress_bar: bool | None = None,
) -> BuildReport:
    """Embed every supported file under ``sources`` into the index at ``out``, adding only what changed.

    A file is re-embedded when its (path, mtime, size) differs from the stored one; with ``prune`` entries for
    files that vanished from a scanned folder are dropped. Files that fail to load are skipped (listed in the
    report, retried next run) rather than aborting a long build. ``model`` may be a loaded model or a path
    saved with ``save_pretrained`` (recorded in the header so ``btoks search`` can find it).

    ``index_type="auto"`` picks exact search below ``AUTO_APPROXIMATE_FROM`` vectors and HNSW above; an
    approximate index reports its estimated recall@10 (``BuildReport.recall_at_10``).
    """
    from btoks.encode import encode

    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; expected one of {', '.join(INDEX_TYPES)}")
    check_chunking(chunk_chars, chunk_overlap)
    if isinstance(model, str | Path):
        from btoks.loading import load

        model_path = model_path or str(Path(model).resolve())
        model = load(model, merge=True)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    roots = [Path(s).expanduser().resolve() for s in sources]
    files = discover(sources)
    probe = encode(model, PROBE_TEXT, show_progress_bar=False)
    dim = int(probe.shape[0])
    with _writer_lock(root):
        prev: Index | None = None
        if not rebuild and (root / CURRENT).exists():
            prev = Index.load(root)
            prev.check_model(model, probe)
        defaults = IndexParams()
        params = IndexParams(index_type=index_type, hnsw_m=hnsw_m, nlist=ivf_nlist,
                             ef_construction=ef_construction or defaults.ef_construction,
                             ef_search=ef_search or defaults.ef_search)
        report = BuildReport(path=str(root), count=0)

        # which stored rows stay, which files need (re-)embedding
        keys = {str(p): _file_key(p) for p in files}
        keep_rows: list[int] = []
        fresh: set[str] = set()
        if prev is not None:
            for row, m in enumerate(prev.meta):
                key = keys.get(m["source"])
                if key == (m.get("mtime_ns"), m.get("size")):
                    keep_rows.append(row)
                    fresh.add(m["source"])
                elif key is None and not (prune and _under(m["source"], roots)):
                    keep_rows.append(row)  # belongs to a source not scanned this time
            report.removed = len(prev) - len(keep_rows)
        todo = [p for p in files if str(p) not in fresh]
        report.unchanged_files = len(files) - len(todo)
        report.new_files = len(todo)

        metas: list[dict[str, Any]] = []
        inputs: list[Any] = []
        for p in todo:
            try:
                for meta, item in _entries(
                    p,
                    num_frames=num_frames,
                    chunk_chars=chunk_chars,
                    chunk_overlap=chunk_overlap,
                    max_text_chars=model.config.max_length * 16,
                ):
                    metas.append(meta)
                    inputs.append(item)
            except (InputError, OSError, ValueError) as e:
                report.skipped.append({"source": str(p), "error": str(e)})
        opts = EncodeOptions(num_frames=num_frames, max_pixels=max_pixels, pdf_scale=pdf_scale)
        doc_instruction = instruction or (model.config.extra or {}).get("document_instruction")
        result = encode_items(
            model,
            inputs,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            instruction=doc_instruction,
            on_error="skip",
            options=opts,
        )
        bad_sources = {metas[i]["source"]: e.detail for i, e in result.errors.items()}
        for src, err in bad_sources.items():  # a file counts as indexed only when all its entries are
            report.skipped.append({"source": src, "error": err})
        good = [i for i, m in enumerate(metas) if m["source"] not in bad_sources]
        new_vecs = result.embeddings[good].numpy().astype(np.float32)
        new_meta = [metas[i] for i in good]
        report.added = len(new_meta)
        index_type = params.index_type = resolve_index_type(index_type, len(keep_rows) + report.added)
        if (
            prev is not None
            and report.added == 0
            and report.removed == 0
            and prev.params.index_type == index_type
            and (ef_search is None or prev.params.ef_search == ef_search)
        ):
            report.count, report.written = len(prev), False
            report.index_type, report.recall_at_10 = index_type, prev.params.recall_at_10
            return report

        grow_ok = index_type != "ivf" or (
            prev is not None and len(prev) + report.added <= 4 * prev.params.trained_on
        )
        if prev is not None and prev.params.index_type == index_type and report.removed == 0 and grow_ok:
            index, params, meta_rows = prev.faiss, prev.params, prev.meta + new_meta
            params.ef_search = ef_search or params.ef_search
            if len(new_vecs):
                index.add(new_vecs)
                if index_type != "flat":
                    params.recall_at_10 = estimate_recall(index, all_vectors(index), params)
        else:  # first build, removals, type change or an IVF that outgrew its training: rebuild
            old = all_vectors(prev.faiss)[keep_rows] if prev is not None else np.zeros((0, dim), np.float32)
            vectors = np.ascontiguousarray(np.concatenate([old, new_vecs]), dtype=np.float32)
            index = make_faiss_index(vectors, params)
            meta_rows = ([prev.meta[r] for r in keep_rows] if prev is not None else []) + new_meta
            report.rebuilt = prev is not None
        header = {
            "format": FORMAT,
            "version": VERSION,
            "model": model_path
            or (prev.header.get("model") if prev is not None else None)
            or model.config.base_model,
            "dim": int(index.d),
            "count": int(index.ntotal),
            "index_type": index_type,
            "metric": "inner_product",
            "normalized": True,
            "params": asdict(params),
            "num_frames": num_frames,
            "chunk_chars": chunk_chars,
            "pdf_scale": pdf_scale,
            "document_instruction": doc_instruction,
            "files": len({m["source"] for m in meta_rows}),
            "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "probe": [round(float(x), 6) for x in probe],
        }
        write_index(root, header, meta_rows, index)
        report.count = int(index.ntotal)
        report.index_type, report.recall_at_10 = index_type, params.recall_at_10
        return report


__all__ = [
    "BToksIndexError",
    "BuildReport",
    "Hit",
    "Index",
    "IndexParams",
    "build_index",
    "chunk_text",
    "discover",
    "estimate_recall",
    "make_faiss_index",
    "resolve_index_type",
    "search",
    "write_index",
]
