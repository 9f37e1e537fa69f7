"""``btoks index`` / ``btoks search`` / ``btoks serve``: argparse wiring, mounted by ``btoks.cli``.

Each ``add_*_args(parser)`` fills a sub-parser; each ``run_*(args)`` executes it and returns an exit code.
Models are folders written by ``BToksModel.save_pretrained``. Heavy imports happen inside ``run_*`` so
``btoks --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from btoks.cli import positive_int

API_KEY_ENV = "BTOKS_API_KEY"


def _load_model(path: str, device: str | None) -> Any:
    from btoks.loading import load

    return load(path, device=device, merge=True)


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default=None, help="torch device for the model, e.g. cpu or cuda:0 (default: as loaded)"
    )


# ------------------------------------------------------------------------------------------------ index


def add_index_args(p: argparse.ArgumentParser) -> None:
    """``btoks index MODEL SOURCES... --out INDEX``."""
    p.add_argument("model", metavar="MODEL", help="model folder written by save_pretrained")
    p.add_argument(
        "sources",
        metavar="SOURCES",
        nargs="+",
        help="files or folders to index (images, PDFs, videos, .txt/.md; folders are walked recursively)",
    )
    p.add_argument("--out", "-o", required=True, metavar="INDEX", help="index folder to create or update")
    p.add_argument(
        "--index-type",
        choices=("auto", "flat", "hnsw", "ivf"),
        default="auto",
        help="auto (default): exact below 100k vectors, HNSW above; flat: exact; hnsw / ivf: approximate "
        "(recall@10 is estimated on a sample at build time and printed)",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="inputs per model batch (default 16)")
    p.add_argument("--frames", type=positive_int, default=8, help="frames sampled per video (default 8)")
    p.add_argument(
        "--chunk-chars",
        type=positive_int,
        default=None,
        help="split text files into chunks of at most this many characters (default: one entry per file)",
    )
    p.add_argument(
        "--chunk-overlap", type=int, default=0, help="characters shared by consecutive text chunks"
    )
    p.add_argument(
        "--pdf-scale", type=float, default=1.0, help="PDF render scale: 1 = 72 dpi, 2 = 144 dpi (default 1)"
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=64_000_000,
        help="refuse images larger than this many pixels (decompression-bomb guard)",
    )
    p.add_argument(
        "--instruction",
        default=None,
        help="instruction prepended to every document (default: none, "
        "or the model's config.extra.document_instruction)",
    )
    p.add_argument("--hnsw-m", type=positive_int, default=32, help="HNSW graph degree (hnsw only)")
    p.add_argument(
        "--ef-construction",
        type=positive_int,
        default=None,
        help="HNSW build-time candidate list (default 80; higher: better graph, slower build)",
    )
    p.add_argument(
        "--ef-search",
        type=positive_int,
        default=None,
        help="HNSW search-time candidate list, stored with the index (default 128; higher: better recall)",
    )
    p.add_argument(
        "--ivf-nlist",
        type=positive_int,
        default=None,
        help="IVF list count (ivf only; default min(4*sqrt(n), n/39))",
    )
    p.add_argument(
        "--rebuild", action="store_true", help="ignore the existing index and embed everything again"
    )
    p.add_argument(
        "--no-prune",
        action="store_true",
        help="keep entries of files that were deleted from the scanned folders",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_device(p)


def run_index(args: argparse.Namespace) -> int:
    from btoks.serve.index import build_index, check_chunking

    check_chunking(args.chunk_chars, args.chunk_overlap)
    model = _load_model(args.model, args.device)
    report = build_index(
        model,
        args.sources,
        args.out,
        index_type=args.index_type,
        batch_size=args.batch_size,
        num_frames=args.frames,
        chunk_chars=args.chunk_chars,
        chunk_overlap=args.chunk_overlap,
        pdf_scale=args.pdf_scale,
        max_pixels=args.max_pixels,
        instruction=args.instruction,
        model_path=str(Path(args.model).resolve()),
        rebuild=args.rebuild,
        prune=not args.no_prune,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        ivf_nlist=args.ivf_nlist,
        show_progress_bar=not args.no_progress,
    )
    state = "written" if report.written else "up to date, nothing written"
    print(
        f"{report.path}: {report.count} entries ({state}); +{report.added} added, -{report.removed} removed, "
        f"{report.new_files} files embedded, {report.unchanged_files} unchanged"
    )
    if report.recall_at_10 is not None:
        print(f"{report.index_type} index: estimated recall@10 {report.recall_at_10:.3f} vs exact search "
              "(stored vectors as queries; raise --ef-search if too low)")
    else:
        print(f"{report.index_type} index: exact search")
    for s in report.skipped:
        print(f"  skipped {s['source']}: {s['error']}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------ search


def add_search_args(p: argparse.ArgumentParser) -> None:
    """``btoks search INDEX "query" [--image q.png] [-k 10] [--model MODEL]``."""
    p.add_argument("index", metavar="INDEX", help="index folder built by `btoks index`")
    p.add_argument("query", nargs="?", default=None, help="query text (optional when --image is given)")
    p.add_argument(
        "--image", default=None, help="query image file (combined with the text when both are given)"
    )
    p.add_argument("-k", type=positive_int, default=10, help="number of results (default 10)")
    p.add_argument(
        "--model", default=None, help="model folder (default: the one recorded in the index header)"
    )
    p.add_argument(
        "--instruction",
        default=None,
        help="query instruction (default: the model's config.extra.query_instruction, if any)",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON lines instead of a table")
    _add_device(p)


def format_hit(hit: Any) -> str:
    where = (
        f"  [page {hit.page}]"
        if hit.page is not None
        else f"  [chunk {hit.chunk}]"
        if hit.chunk is not None
        else ""
    )
    preview = f"\n      {hit.preview[:100]}" if hit.preview else ""
    return f"{hit.rank:>3}. {hit.score:.4f}  {hit.source}{where}{preview}"


def run_search(args: argparse.Namespace) -> int:
    from btoks.serve.index import Index

    if not args.query and not args.image:
        raise ValueError("give a query text, --image, or both")
    index = Index.load(args.index)
    model_path = args.model or index.header.get("model")
    if not model_path:
        raise ValueError("the index does not record its model; pass --model MODEL")
    model = _load_model(model_path, args.device)
    image = Path(args.image) if args.image else None
    hits = index.search(model, args.query, image, k=args.k, instruction=args.instruction)
    for hit in hits:
        print(json.dumps(hit.to_dict(), ensure_ascii=False) if args.json else format_hit(hit))
    if not hits and not args.json:
        print("(no results: the index is empty)")
    return 0


# ------------------------------------------------------------------------------------------------ serve


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """``btoks serve MODEL [--index INDEX] [--host 127.0.0.1] [--port 8000] [--api-key KEY] ...``."""
    from btoks.serve.app import (
        DEFAULT_BODY_TIMEOUT_S,
        DEFAULT_MAX_BATCH,
        DEFAULT_MAX_IMAGE_PIXELS,
        DEFAULT_MAX_IMAGES,
        DEFAULT_MAX_IMAGES_IN_FLIGHT,
        DEFAULT_MAX_INPUTS,
    )

    p.add_argument("model", metavar="MODEL", help="model folder written by save_pretrained")
    p.add_argument("--index", default=None, help="index folder to serve POST /search from")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; use 0.0.0.0 only behind an API key / proxy)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; prefer the env variable, "
        "command lines are visible to other users)",
    )
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (default 16)")
    p.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help=f"largest image accepted, width*height (default {DEFAULT_MAX_IMAGE_PIXELS:,})",
    )
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=DEFAULT_MAX_BATCH,
        help=f"inputs per model batch when grouping concurrent requests (default {DEFAULT_MAX_BATCH})",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long the first request of a batch waits for others (default 5 ms)",
    )
    p.add_argument(
        "--max-inputs",
        type=positive_int,
        default=DEFAULT_MAX_INPUTS,
        help=f"most inputs in one /v1/embeddings request (default {DEFAULT_MAX_INPUTS})",
    )
    p.add_argument(
        "--max-images",
        type=positive_int,
        default=DEFAULT_MAX_IMAGES,
        help=f"most images in one request (default {DEFAULT_MAX_IMAGES}; more: 413)",
    )
    p.add_argument(
        "--max-images-in-flight",
        type=positive_int,
        default=DEFAULT_MAX_IMAGES_IN_FLIGHT,
        help="decoded images the whole server holds at once; further requests wait, then get 503 "
        f"(default {DEFAULT_MAX_IMAGES_IN_FLIGHT})",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT_S,
        help=f"seconds a client may take to send its request body (default {DEFAULT_BODY_TIMEOUT_S:g}; more: 408)",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="comma-separated proxy addresses whose X-Forwarded-For/-Proto headers are trusted "
        "(default: loopback only; see docs/security.md)",
    )
    p.add_argument(
        "--model-name", default=None, help="name reported in responses (default: the model folder name)"
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn log level (default info)",
    )
    _add_device(p)


def run_serve(args: argparse.Namespace) -> int:
    from btoks.serve.app import serve

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    model = _load_model(args.model, args.device)
    serve(
        model,
        args.index,
        host=args.host,
        port=args.port,
        api_key=api_key,
        log_level=args.log_level,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_image_pixels=args.max_image_pixels,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_inputs=args.max_inputs,
        max_images=args.max_images,
        max_images_in_flight=args.max_images_in_flight,
        body_timeout_s=args.body_timeout if args.body_timeout > 0 else None,
        forwarded_allow_ips=args.forwarded_allow_ips,
        model_name=args.model_name or Path(args.model).resolve().name,
    )
    return 0


__all__ = ["add_index_args", "add_search_args", "add_serve_args", "run_index", "run_search", "run_serve"]
