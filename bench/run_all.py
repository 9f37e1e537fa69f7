"""Run every benchmark table (``make bench``), each in its own process, and print all tables at the end.

One process per table keeps allocator state, thread pools and the 1M-vector search index of one table from
affecting another, and lets the memory table start fresh workers. Tables are also written to ``--out``
(``runs/bench`` by default: one ``<table>.md`` / ``.json`` each plus ``summary.md``), which is what
docs/benchmarks.md is updated from.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import TABLES
from bench.common import fmt_seconds, machine_line

ROOT = Path(__file__).resolve().parents[1]
NO_MODEL = {"search"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help=f"run only this table (name or number 1-{len(TABLES)}; repeatable or comma-separated): "
                        + ", ".join(TABLES))
    p.add_argument("--quick", action="store_true", help="small sizes and 3 repeats: a smoke run, not for the doc")
    p.add_argument("--model", default=None, help="backbone for tables 1-4 and 6 (default: each table's 'auto')")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per arm (default 5; quick 3)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench"), help="where tables are written")
    return p


def selected(only: list[str] | None) -> list[str]:
    if not only:
        return list(TABLES)
    names = []
    for item in (x.strip() for o in only for x in o.split(",") if x.strip()):
        name = TABLES[int(item) - 1] if item.isdigit() and 1 <= int(item) <= len(TABLES) else item
        if name not in TABLES:
            raise SystemExit(f"unknown table {item!r}; choose from {', '.join(TABLES)} (or 1-{len(TABLES)})")
        if name not in names:
            names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = selected(args.only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    header = [f"machine: {machine_line()}", f"command: python -m bench.run_all {' '.join(argv or sys.argv[1:])}"]
    print("\n".join(header), flush=True)
    spent: dict[str, float] = {}
    failed: list[str] = []
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        cmd = [sys.executable, "-m", f"bench.{name}", "--save", str(out)]
        if args.quick:
            cmd.append("--quick")
        if args.repeats:
            cmd += ["--repeats", str(args.repeats)]
        if args.model and name not in NO_MODEL:
            cmd += ["--model", args.model]
        print(f"\n=== [{i}/{len(names)}] {name}: {' '.join(cmd[1:])}", flush=True)
        (out / f"{name}.md").unlink(missing_ok=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
        spent[name] = time.perf_counter() - t0
        if rc != 0:
            failed.append(name)
            print(f"=== {name} FAILED (exit {rc})", flush=True)
    total = time.perf_counter() - start
    parts = ["# btoks benchmarks", "", *(f"- {h}" for h in header),
             "- time per table: " + ", ".join(f"{n} {fmt_seconds(s)}" for n, s in spent.items())
             + f"; total {fmt_seconds(total)}", ""]
    for name in names:
        md = out / f"{name}.md"
        parts.append(md.read_text(encoding="utf-8") if md.is_file() else f"### {name}: FAILED\n")
    summary = "\n".join(parts)
    (out / "summary.md").write_text(summary, encoding="utf-8")
    print("\n" + "=" * 100 + "\n" + summary, flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
