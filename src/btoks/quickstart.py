"""``make quickstart``: the whole btoks workflow on a real small MLLM, offline, on a CPU.

1. build mini-MMEB (real data shipped in PyPI packages, all 9 meta-tasks);
2. train ``btoks-mini`` twice with identical data, steps and seed: BToks + GIC (K=4) and the last-token
   baseline (K=0, no generative loss);
3. evaluate both on mini-MMEB and compare them per meta-task, per modality and overall, with a paired
   bootstrap over queries and a Wilcoxon test across datasets;
4. index the test images with the trained model and run ``btoks search``.

Every stage is resumable: re-running skips finished models and evaluations (``--fresh`` starts over).
``--preset full`` trains longer on the full-size mini-MMEB for benchmark-quality numbers.
"""

from __future__ import annotations

import argparse
import json
import queue as _queue
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btoks.data.mini_mmeb import build_mini_mmeb, describe
from btoks.data.mini_mmeb.common import VERSION
from btoks.eval.compare import compare
from btoks.eval.runner import evaluate
from btoks.train.config import TrainConfig
from btoks.train.rundir import check_same_run

BASELINE = ["btoks.num_btoks=0", "btoks.pooling=last", "btoks.gen_weight=0"]


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    overrides: tuple[str, ...]


ARMS = (Arm("lasttoken", "last-token", tuple(BASELINE)), Arm("btoks", "BToks+GIC", ()))


def _stage(title: str) -> float:
    print(f"\n=== {title} " + "=" * max(0, 100 - len(title)), flush=True)
    return time.perf_counter()


def _built(manifest: Path, size: str, seed: int) -> bool:
    """A finished build of this size and seed by this version of the builder (anything else is rebuilt)."""
    if not manifest.is_file():
        return False
    m = json.loads(manifest.read_text())
    return (m.get("size"), m.get("seed"), m.get("version")) == (size, seed, VERSION)


def build_data(out: Path, size: str, seed: int) -> Path:
    data = out / "data"
    manifest = data / "manifest.json"
    if _built(manifest, size, seed):
        print(f"mini-MMEB ({size}) already built in {data}")
        return data
    m = build_mini_mmeb(data, seed=seed, size=size, overwrite=True)
    print(f"mini-MMEB ({size}): {describe(m)} -> {data}")
    return data


def arm_config(preset: str, arm: Arm, out: Path, data: Path, extra: list[str]) -> TrainConfig:
    """The arm's training configuration; refuses an existing run folder of another configuration."""
    cfg = TrainConfig.from_yaml(preset, [*arm.overrides, f"output_dir={out / arm.name}", f"data_root={data}",
                                         *extra])
    check_same_run(Path(cfg.output_dir), cfg.to_dict(),
                   "re-run with --fresh to start over, or give another --out folder")
    return cfg


def train_arm(preset: str, arm: Arm, out: Path, data: Path, extra: list[str],
              on_step: Callable[[int, dict[str, float]], None] | None = None, progress: bool = True) -> Path:
    from btoks.train.trainer import Trainer

    cfg = arm_config(preset, arm, out, data, extra)
    model_dir = Path(cfg.output_dir) / "model"
    if (model_dir / "btoks_config.json").is_file():
        print(f"{arm.label}: trained model found in {model_dir}")
        return model_dir
    print(f"{arm.label}: {cfg.max_steps} steps, batch {cfg.batch_size}, K={cfg.btoks.num_btoks}, "
          f"pooling={cfg.btoks.pooling}, λ={cfg.btoks.gen_weight}, seed {cfg.seed}", flush=True)
    Trainer(cfg).train(on_step=on_step, progress=progress)
    return model_dir


def _train_worker(preset: str, arm: Arm, out: Path, data: Path, extra: list[str], threads: int, active: Any,
                  queue: Any) -> None:
    """One arm in its own process, progress and the outcome sent to ``queue``. It uses its share of the
    ``threads`` CPU threads among the ``active`` arms, and takes them all once the other arm has finished."""
    import torch

    def take_share() -> None:
        share = max(1, threads // max(1, active.value))
        if share != torch.get_num_threads():
            torch.set_num_threads(share)

    def on_step(step: int, rec: dict[str, float]) -> None:
        take_share()
        queue.put((arm.name, "step", (step, rec["contrastive"], rec["generative"])))

    take_share()
    t0 = time.perf_counter()
    try:
        train_arm(preset, arm, out, data, extra, on_step=on_step, progress=False)
    except BaseException:
        queue.put((arm.name, "error", traceback.format_exc()))  # the parent prints it once, naming the arm
        raise SystemExit(1) from None
    queue.put((arm.name, "done", time.perf_counter() - t0))


def train_arms_together(preset: str, arms: Sequence[Arm], out: Path, data: Path, extra: list[str],
                        jobs: int) -> dict[str, float]:
    """Train ``arms`` in ``jobs`` processes at once, the CPU threads split between the running ones; returns
    each arm's training seconds. On a small CPU this beats one arm after the other with every thread each, as
    one step of this model is too small to keep two threads busy (docs/results.md measures it)."""
    import multiprocessing as mp

    from tqdm.auto import tqdm

    steps = {a.name: arm_config(preset, a, out, data, extra).max_steps for a in arms}
    ctx = mp.get_context("spawn")
    queue, active = ctx.Queue(), ctx.Value("i", 0)
    bars = {a.name: tqdm(total=steps[a.name], desc=f"train {a.label}", position=i, leave=True)
            for i, a in enumerate(arms)}
    seconds: dict[str, float] = {}
    pending = list(arms)
    running: dict[str, Any] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                arm = pending.pop(0)
                active.value += 1
                proc = ctx.Process(target=_train_worker, name=f"train-{arm.name}",
                                   args=(preset, arm, out, data, extra, torch_threads(), active, queue))
                proc.start()
                running[arm.name] = proc
            try:
                name, kind, value = queue.get(timeout=1.0)
            except _queue.Empty:
                for name, proc in list(running.items()):
                    if not proc.is_alive() and proc.exitcode != 0:
                        raise RuntimeError(f"training {name} stopped with exit code {proc.exitcode}") from None
                continue
            if kind == "step":
                step, con, gen = value
                bars[name].update(step - bars[name].n)
                bars[name].set_postfix(con=f"{con:.3f}", gen=f"{gen:.3f}")
            elif kind == "error":
                raise RuntimeError(f"training {name} failed:\n{value}")
            else:
                seconds[name] = value
                running.pop(name).join()
                active.value -= 1
    finally:
        for proc in running.values():
            proc.terminate()
            proc.join()
        for bar in bars.values():
            bar.close()
    return seconds


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def first_losses(run: Path) -> tuple[float, float]:
    """Contrastive loss at the first and last logged step (log.jsonl)."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return rows[0]["contrastive"], rows[-1]["contrastive"]


SEARCH_QUERIES = ("a blue circle", "a yellow triangle", "a green rectangle")
"""The closing demo: the first is the README's example; the others are checked the same way."""
INDEX_INSTRUCTION = "<|image_1|> Represent the given image."
SEARCH_INSTRUCTION = "Find me an everyday image that matches the given caption:"


def shape_labels(data: Path) -> dict[str, str]:
    """True label ("a small blue circle in the top-left corner") of every indexed test shape image, by file name."""
    from btoks.data.mini_mmeb import Sources

    return {f"{it.id}.png": it.caption for it in Sources().shapes("test")
            if (data / "images" / "easyvqa" / "test" / f"{it.id}.png").is_file()}


def search_report(index: Path, model_dir: Path, labels: dict[str, str], queries: tuple[str, ...] = SEARCH_QUERIES,
                  k: int = 3) -> list[dict[str, Any]]:
    """Top-``k`` hits per query with their true labels, and whether each hit has the asked colour and kind."""
    from btoks.loading import load
    from btoks.serve.index import Index

    idx = Index.load(index)
    model = load(model_dir, merge=True)
    report = []
    for query in queries:
        words = set(query.split())
        hits = []
        for hit in idx.search(model, query, k=k, instruction=SEARCH_INSTRUCTION):
            label = labels.get(Path(hit.source).name, "(no label: its easy-vqa answers leave colour or shape open)")
            hits.append({"rank": hit.rank, "score": round(hit.score, 4), "file": Path(hit.source).name,
                         "label": label, "match": all(w in label.split() for w in words - {"a"})})
        report.append({"query": query, "hits": hits, "matches": sum(h["match"] for h in hits)})
    return report


def print_search(report: list[dict[str, Any]]) -> None:
    for q in report:
        print(f'\n$ btoks search INDEX "{q["query"]}" -k {len(q["hits"])}   '
              f'({q["matches"]}/{len(q["hits"])} of the asked colour and kind)')
        print(f"  {'rank':>4}  {'score':>6}  {'file':<10}  true label")
        for h in q["hits"]:
            print(f"  {h['rank']:>4}  {h['score']:>6.3f}  {h['file']:<10}  {h['label']}{'' if h['match'] else '  ✗'}")


def search_example(model_dir: Path, data: Path, out: Path) -> list[dict[str, Any]]:
    """Index the mini-MMEB test shape images with the BToks model via the CLI, then search them by caption
    (with the instructions the t2i training set used) and report the top 3 with their true labels."""
    import logging

    from btoks.cli import main as btoks

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its per-CPU-variant INFO lines are noise here
    images = data / "images" / "easyvqa" / "test"
    index = out / "index"
    argv = ["index", str(model_dir), str(images), "--out", str(index), "--instruction", INDEX_INSTRUCTION]
    print("$ btoks " + " ".join(argv), flush=True)
    code = btoks(argv)
    if code:
        raise RuntimeError(f"`btoks {' '.join(argv)}` failed with exit code {code}")
    report = search_report(index, model_dir, shape_labels(data))
    print_search(report)
    return report


def add_quickstart_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``btoks quickstart`` (also ``python -m btoks.quickstart``, ``make quickstart``)."""
    parser.description = __doc__
    parser.add_argument("--preset", choices=("quick", "full"), default="quick",
                        help="quick: mini-MMEB quick + presets/mini-quick.yaml (≤ 15 min on 2 CPU cores); "
                             "full: mini-MMEB full + presets/mini-full.yaml (about an hour)")
    parser.add_argument("--out", default=None, help="output folder (default runs/quickstart or runs/quickstart-full)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data build and of both training runs")
    parser.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    parser.add_argument("--no-search", action="store_true", help="skip the index/search example")
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2),
                        help="train the two arms in 2 processes at once, the CPU threads split between them "
                             "(default; ~1.4x the throughput on 2 cores), or 1 after the other")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="TrainConfig overrides applied to both arms, e.g. max_steps=20")


def _previous_times(out: Path) -> dict[str, Any]:
    """The stage timings of an earlier run into ``out`` (plus its per-arm training times), or nothing."""
    try:
        summary = json.loads((out / "quickstart.json").read_text())
        return {**summary["wall_times_s"], "arm_train_s": dict(summary.get("arm_train_s") or {})}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def run_quickstart(args: argparse.Namespace) -> int:
    """Run the four stages; a stage whose output is already there is reused and keeps its recorded time."""
    out = Path(args.out or ("runs/quickstart" if args.preset == "quick" else "runs/quickstart-full"))
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    preset = f"mini-{args.preset}"
    extra = [f"seed={args.seed}", *args.overrides]
    times: dict[str, float] = {}
    arm_seconds: dict[str, float] = {}  # with --jobs 2: each arm's own training time (overlapping)
    search: list[dict[str, Any]] = []
    previous = _previous_times(out)
    started = time.perf_counter()

    def record(key: str, t0: float, reused: bool) -> None:  # a re-run keeps the first run's stage timings
        if not reused:
            times[key] = time.perf_counter() - t0
        elif key in previous:
            times[key] = previous[key]

    t = _stage("1/4 build mini-MMEB")
    manifest = out / "data" / "manifest.json"
    reused = _built(manifest, args.preset, args.seed)
    data = build_data(out, args.preset, args.seed)
    record("data_s", t, reused)

    trained = {a.name: not (out / a.name / "model" / "btoks_config.json").is_file() for a in ARMS}
    models = {a.name: out / a.name / "model" for a in ARMS}
    todo = [a for a in ARMS if trained[a.name]]
    if args.jobs > 1 and len(todo) > 1:  # train_s: the wall time of both; arm_train_s: each arm's (overlapping)
        t = _stage(f"2/4 train {' and '.join(a.label for a in todo)} at once ({args.jobs} processes, "
                   f"{max(1, torch_threads() // args.jobs)} threads each)")
        arm_seconds = train_arms_together(preset, todo, out, data, extra, args.jobs)
        record("train_s", t, False)
    else:
        arm_seconds = {} if todo else previous.get("arm_train_s", {})
        record("train_s", 0.0, True)  # a re-run of a run that trained both at once keeps that run's time
        for arm in ARMS:
            t = _stage(f"2/4 train {arm.label}")
            models[arm.name] = train_arm(preset, arm, out, data, extra)
            record(f"train_{arm.name}_s", t, not trained[arm.name])

    for arm in ARMS:
        t = _stage(f"3/4 evaluate {arm.label}")
        reused = not trained[arm.name] and (out / f"eval-{arm.name}" / "summary.json").is_file()
        evaluate(models[arm.name], data, out_dir=out / f"eval-{arm.name}", batch_size=32)
        record(f"eval_{arm.name}_s", t, reused)

    res = compare(out / "eval-lasttoken", out / "eval-btoks", out / "compare",
                  labels=(ARMS[0].label, ARMS[1].label), progress=False)
    print("\n" + (out / "compare" / "compare.md").read_text())

    if not args.no_search:
        t = _stage("4/4 search with the trained BToks model")
        search = search_example(models["btoks"], data, out)
        record("search_s", t, False)

    times["total_s"] = sum(times.values())  # of the stages as first run (reused stages keep their time)
    summary: dict[str, Any] = {
        "preset": args.preset, "seed": args.seed, "overrides": args.overrides, "wall_times_s": times,
        "arm_train_s": arm_seconds,
        "this_run_s": time.perf_counter() - started,
        "overall": res["overall"], "meta_tasks": res["meta_tasks"], "modalities": res["modalities"],
        "contrastive_loss_first_last": {a.name: first_losses(out / a.name) for a in ARMS},
        "search": search,
    }
    (out / "quickstart.json").write_text(json.dumps(summary, indent=1))
    print(f"\nDone in {summary['this_run_s'] / 60:.1f} min. Reports: {out}/eval-btoks/summary.md, "
          f"{out}/eval-lasttoken/summary.md, {out}/compare/compare.{{md,png}}; timings in {out}/quickstart.json")
    return 0


if __name__ == "__main__":
    import sys

    from btoks.cli import main

    raise SystemExit(main(["quickstart", *sys.argv[1:]]))
