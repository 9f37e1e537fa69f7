"""Table 4: GradCache peak memory, batch 256 in chunks of 16 ÷ batch 16 without caching.

How peak memory is measured on CPU: every configuration runs in a *fresh subprocess* (no allocator state shared
between configurations). The worker loads the model, applies LoRA, tokenises the batch, collects garbage and
trims the heap, then reads its current resident set size (``/proc/self/statm``) as the baseline, resets the
kernel's peak-RSS counter (writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM``), runs one
``compute_gradients`` step and reads ``VmHWM``. Peak − baseline is what the step itself needed (activations,
autograd buffers, logits, gradients, allocator slack) as the operating system sees it. Where ``clear_refs`` is
not writable the worker falls back to ``ru_maxrss`` (then load-time peaks can hide a smaller step peak; the
table says which method ran).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Table, base_parser, emit, fmt_bytes, fmt_seconds, goal_cell, load_average

NAME = "gradcache_memory"
GOAL = 1.3
CONFIGS = ((16, None), (64, None), (256, 16))
QUICK_CONFIGS = ((16, None), (64, 16))
REFERENCE = (16, None)


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1, help="fresh subprocesses per configuration (default 1)")
    p.add_argument("--worker", nargs=2, type=int, metavar=("BATCH", "CHUNK"), help=argparse.SUPPRESS)
    p.add_argument("--image-tokens", type=int, default=None, help="tokens one image costs (default: the model's)")
    p.add_argument("--target-tokens", type=int, default=24, help="caption length: positive text and GIC target")
    return p


# ---------------------------------------------------------------------------------------------------- worker


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration in this (fresh) process: baseline RSS, then peak RSS during one step."""
    from bench.common import load_bench_backbone
    from bench.train_step import Kind, image_tokens_of, make_batch
    from btoks.config import BToksConfig
    from btoks.model import BToksModel
    from btoks.train.step import compute_gradients

    batch_size, chunk = args.worker
    backbone, model_name = load_bench_backbone(args.model)
    model = BToksModel(backbone, BToksConfig(num_btoks=4, gen_weight=1.0, max_length=1024))
    model.apply_lora(r=16, alpha=32, dropout=0.0, dora=False)
    model.train()
    kind = Kind("captions", 1.0, 10, None, False, (args.target_tokens, args.target_tokens), "")
    image_tokens = args.image_tokens or image_tokens_of(backbone)
    batch = make_batch(model, kind, batch_size, image_tokens, chunk_size=chunk or None)
    _trim_heap()
    base = _rss()
    exact = _reset_peak()
    t0 = time.perf_counter()
    compute_gradients(model, batch, 1.0)
    seconds = time.perf_counter() - t0
    peak = _hwm() if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"batch": batch_size, "chunk": chunk, "baseline": base, "peak": peak, "delta": peak - base,
            "seconds": seconds, "method": "VmHWM after clear_refs" if exact else "ru_maxrss", "model": model_name,
            "image_tokens": image_tokens, "chunks": {s: len(c) for s, c in batch.chunks.items()}}


# ---------------------------------------------------------------------------------------------------- parent


def _run_worker(args: argparse.Namespace, batch: int, chunk: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", f"bench.{NAME}", "--worker", str(batch), str(chunk or 0), "--model", args.model,
           "--target-tokens", str(args.target_tokens)]
    if args.image_tokens:
        cmd += ["--image-tokens", str(args.image_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker {batch}/{chunk} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def run(args: argparse.Namespace) -> Table:
    from tqdm.auto import tqdm

    configs = QUICK_CONFIGS if args.quick else CONFIGS
    results: dict[tuple[int, int | None], list[dict[str, Any]]] = {}
    jobs = [(b, c) for b, c in configs for _ in range(args.runs)]
    for b, c in tqdm(jobs, desc=NAME, unit="process", leave=False, file=sys.stderr):
        results.setdefault((b, c), []).append(_run_worker(args, b, c))
    ref = statistics.median(r["delta"] for r in results[REFERENCE])
    rows, data = [], {}
    for (b, c), rs in results.items():
        delta = statistics.median(r["delta"] for r in rs)
        secs = statistics.median(r["seconds"] for r in rs)
        is_gc = c is not None
        rel = delta / ref
        rng = f" ({min(r['delta'] for r in rs) / ref:.2f}–{max(r['delta'] for r in rs) / ref:.2f})" \
            if len(rs) > 1 else ""
        goal = goal_cell(rel, GOAL, False) if is_gc and b == max(bb for bb, cc in configs if cc) else ""
        rows.append([str(b), str(c) if is_gc else "— (one pass)", fmt_bytes(statistics.median(r["baseline"] for r in rs)),
                     fmt_bytes(delta), f"{rel:.2f}{rng}", fmt_seconds(secs), f"{secs / b * 1e3:.0f} ms", goal])
        data[f"{b}/{c}"] = rs
    first = next(iter(results.values()))[0]
    return Table(
        NAME, "4. GradCache: peak memory of one training step ÷ batch 16 without caching",
        ["batch (pairs)", "GradCache chunk", "RSS after load", "step peak − baseline", "÷ batch 16, no cache",
         "step time", "time per pair", "goal"],
        rows,
        [f"model: {first['model']}, LoRA r16 (mini recipe), K=4, GIC on; each pair = query (1 image = "
         f"{first['image_tokens']} tokens + 10 text tokens) and a {args.target_tokens}-token caption that is also the "
         f"query's GIC target.",
         f"peak = `{first['method']}` in a fresh subprocess per configuration, minus the RSS just before the step "
         f"(after model load, LoRA and tokenisation, `gc.collect()` + `malloc_trim`); {args.runs} run(s) per "
         f"configuration (median); step time is a single measurement, for context only; load average "
         f"{load_average()}."],
        data,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    emit(run(args), args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
