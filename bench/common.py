"""Shared benchmark helpers: interleaved timing, ratio formatting, tables, model loading, exact-length texts.

Timing is *interleaved*: after one warm-up call of every arm, each round runs every arm once (rotating the order),
so a burst of background load hits all arms of a round alike. A ratio's headline is the ratio of the arms'
medians; its range is the min–max of the per-round (paired) ratios, which shows how noisy the machine was;
"best" is the ratio of each arm's fastest round, the least disturbed measurement on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

DEFAULT_REPEATS = 5
QUICK_REPEATS = 3
GOAL_MET, GOAL_MISSED = "met", "**missed**"


# ---------------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds per call of one arm, one entry per round (warm-up excluded)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def rate(self, work: float) -> float:
        """``work`` units per second at the median time (e.g. texts/s)."""
        return work / self.median

    def cell(self) -> str:
        return f"{fmt_seconds(self.median)} ({fmt_seconds(self.min)}–{fmt_seconds(self.max)})"


def interleaved(arms: Mapping[str, Callable[[], Any]], repeats: int = DEFAULT_REPEATS, warmup: int = 1,
                desc: str = "timing") -> dict[str, Timing]:
    """Time every arm ``repeats`` times after ``warmup`` untimed calls, round-robin with a rotating order."""
    names = list(arms)
    total = (warmup + repeats) * len(names)
    samples: dict[str, list[float]] = {n: [] for n in names}
    with tqdm(total=total, desc=desc, unit="call", leave=False, file=sys.stderr) as bar:
        for _ in range(warmup):
            for n in names:
                arms[n]()
                bar.update()
        for r in range(repeats):
            for n in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                arms[n]()
                samples[n].append(time.perf_counter() - t0)
                bar.update()
    return {n: Timing(s) for n, s in samples.items()}


@dataclass
class Ratio:
    """``value`` = ratio of medians; ``lo``/``hi`` = min/max of the paired per-round ratios; ``best`` = ratio
    of the fastest rounds (on a shared machine the least-disturbed run of each arm: a second opinion)."""

    value: float
    lo: float
    hi: float
    best: float

    def cell(self, digits: int = 3, best: bool = False) -> str:
        extra = f"; best {self.best:.{digits}f}" if best else ""
        return f"{self.value:.{digits}f} ({self.lo:.{digits}f}–{self.hi:.{digits}f}{extra})"

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "best": self.best}


def ratio(num: Sequence[float] | Timing, den: Sequence[float] | Timing) -> Ratio:
    """``num ÷ den`` for two paired sample lists (times, or anything measured round by round)."""
    a = num.samples if isinstance(num, Timing) else list(num)
    b = den.samples if isinstance(den, Timing) else list(den)
    paired = [x / y for x, y in zip(a, b, strict=True)]
    return Ratio(statistics.median(a) / statistics.median(b), min(paired), max(paired), min(a) / min(b))


def speedup(fast: Timing, slow: Timing) -> Ratio:
    """Throughput of ``fast`` ÷ throughput of ``slow`` for the same work = time(slow) ÷ time(fast)."""
    return ratio(slow, fast)


def goal_cell(value: float, goal: float, higher_is_better: bool) -> str:
    ok = value >= goal if higher_is_better else value <= goal
    return f"{'≥' if higher_is_better else '≤'} {goal:g}: {GOAL_MET if ok else GOAL_MISSED}"


def fmt_seconds(s: float) -> str:
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if abs(n) < 10 * 2**30 else f"{n / 2**30:.1f} GiB"


# ---------------------------------------------------------------------------------------------------- tables


@dataclass
class Table:
    """One benchmark's result: a markdown table plus notes, and the raw numbers for ``--save``."""

    name: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        cols = [self.headers, *self.rows]
        widths = [max(len(r[i]) for r in cols) for i in range(len(self.headers))]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        out = [f"### {self.title}", "", line(self.headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(r) for r in self.rows]
        if self.notes:
            out += ["", *(f"- {n}" for n in self.notes)]
        return "\n".join(out) + "\n"


def emit(table: Table, save: str | None) -> None:
    """Print the table; with ``save`` also write ``<save>/<name>.md`` and ``<name>.json``."""
    print("\n" + table.markdown(), flush=True)
    if save:
        out = Path(save)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{table.name}.md").write_text(table.markdown(), encoding="utf-8")
        payload = {"name": table.name, "title": table.title, "headers": table.headers, "rows": table.rows,
                   "notes": table.notes, "data": table.data, "machine": machine_info()}
        (out / f"{table.name}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n",
                                                encoding="utf-8")


def script_main(build_parser: Callable[[], argparse.ArgumentParser],
                run: Callable[[argparse.Namespace], Table]) -> Callable[[list[str] | None], int]:
    """The ``main(argv)`` of a one-table benchmark script: parse, run, print (and save) the table."""

    def main(argv: list[str] | None = None) -> int:
        args = build_parser().parse_args(argv)
        emit(run(args), args.save)
        return 0

    return main


# ---------------------------------------------------------------------------------------------------- CLI


def base_parser(prog: str, description: str, *, model: bool = True,
                default_repeats: int = DEFAULT_REPEATS) -> argparse.ArgumentParser:
    """Options every table takes (``run_all`` forwards ``--quick``, ``--model``, ``--repeats``, ``--save``)."""
    p = argparse.ArgumentParser(prog=f"python -m bench.{prog}", description=description)
    p.set_defaults(default_repeats=default_repeats)
    if model:
        p.add_argument("--model", default="auto",
                       help="backbone: 'auto' (btoks-mini when it loads, else SmolLM2-135M), 'btoks-mini', "
                            "'smollm2', 'tiny:llama', or a path / hub name")
    p.add_argument("--quick", action="store_true", help="small sizes and 3 repeats (a smoke run, noisy)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed rounds after warm-up (default {default_repeats}; {QUICK_REPEATS} with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per arm (default 1)")
    p.add_argument("--save", default=None, metavar="DIR", help="also write DIR/<table>.md and .json")
    return p


def repeats_of(args: argparse.Namespace) -> int:
    n = args.repeats or (QUICK_REPEATS if args.quick else getattr(args, "default_repeats", DEFAULT_REPEATS))
    if n < 1:
        raise SystemExit("--repeats must be >= 1")
    return n


def quiet_libraries() -> None:
    """No HF hub access, no weight-loading progress bars or warnings between our own tqdm lines."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # deprecation chatter
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


# ---------------------------------------------------------------------------------------------------- model


def load_bench_backbone(model: str = "auto", **kwargs: Any) -> tuple[Any, str]:
    """Load the backbone to benchmark and say which it is.

    ``auto`` is the project's default model ``btoks-mini`` (SmolLM2-135M decoder, 12 layers, plus an
    EfficientNet vision tower) when it loads, else the full 30-layer SmolLM2-135M-Instruct decoder.
    """
    quiet_libraries()
    from btoks.backbones import load_backbone
    from btoks.backbones.mini_parts import smollm2_path

    if model == "auto":
        try:
            return load_backbone("btoks-mini", **kwargs), "btoks-mini"
        except Exception as e:  # not built on this checkout yet: fall back, but say why
            print(f"[bench] btoks-mini unavailable ({type(e).__name__}: {e}); using SmolLM2-135M", file=sys.stderr)
            model = "smollm2"
    if model == "smollm2":
        return load_backbone(str(smollm2_path()), **kwargs), "SmolLM2-135M-Instruct"
    return load_backbone(model, **kwargs), model


def describe_backbone(backbone: Any) -> str:
    cfg = backbone.model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = sum(p.numel() for p in backbone.model.parameters())
    return (f"{n / 1e6:.0f}M params, {text.num_hidden_layers} layers, hidden {text.hidden_size}, "
            f"vocab {text.vocab_size}, attn {getattr(cfg, '_attn_implementation', '?')}")


_WORD = re.compile(r"^[a-z]{3,9}$")


_WORDS_CACHE: dict[int, list[str]] = {}


def _single_token_words(tokenizer: Any, limit: int = 2000) -> list[str]:
    """Lower-case words that the tokenizer turns into exactly one token when preceded by a space."""
    if id(tokenizer) in _WORDS_CACHE:
        return _WORDS_CACHE[id(tokenizer)]
    words: list[str] = []
    for piece in sorted(tokenizer.get_vocab()):
        w = tokenizer.convert_tokens_to_string([piece])
        if w.startswith(" ") and _WORD.match(w[1:]) and len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1:
            words.append(w[1:])
            if len(words) >= limit:
                break
    if len(words) < 20:
        raise ValueError("tokenizer has too few single-token words to build exact-length texts")
    _WORDS_CACHE[id(tokenizer)] = words
    return words


def exact_texts(tokenizer: Any, length: int, n: int, seed: int = 0) -> list[str]:
    """``n`` texts of random words that tokenise to exactly ``length`` tokens each (no special tokens).

    Content does not change a transformer's compute, but exact lengths do: no padding, same work in every arm.
    """
    words = _single_token_words(tokenizer)
    rng = random.Random(seed * 1_000_003 + length)
    texts = ["".join(" " + rng.choice(words) for _ in range(length)) for _ in range(n)]
    for t in texts:
        got = len(tokenizer(t, add_special_tokens=False)["input_ids"])
        if got != length:  # a merge across words would change the work; never silently
            raise ValueError(f"exact_texts: wanted {length} tokens, got {got}")
    return texts


# ---------------------------------------------------------------------------------------------------- machine


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory and library versions (printed in every report)."""
    import numpy as np
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem, "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"), "load_average_1_5_15": load_average(),
    }
    for mod in ("transformers", "faiss"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = "not installed"
    return info


def machine_line() -> str:
    m = machine_info()
    return (f"{m['cpu']}, {m['cores']} cores, {m['memory']}; torch {m['torch']} ({m['torch_threads']} threads), "
            f"OMP_WAIT_POLICY={m['omp_wait_policy']}, transformers {m['transformers']}, faiss {m['faiss']}; "
            f"load average {m['load_average_1_5_15']}")
