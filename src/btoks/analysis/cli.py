"""``btoks analyze attention MODEL --data DIR`` and ``btoks decode MODEL INPUT`` (mounted by btoks.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from btoks.cli import positive_int

MODEL_HELP = ("a saved BToks model folder (BToksModel.save_pretrained, or a training run folder with model/), "
              "or a backbone to wrap with fresh BToks: hub name / path, btoks-mini, tiny:qwen2_vl, tiny:llama")


def _common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--num-btoks", type=int, default=4,
                   help="K when MODEL is a backbone (a saved BToks model keeps its own K; default 4)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: where it loads)")


def _data_args(p: argparse.ArgumentParser, required: bool, limit: int) -> None:
    p.add_argument("--data", required=required,
                   help="mini-MMEB folder (manifest.json + train/*.jsonl; each set's own ntp_side) or one "
                        "MMEB-train table / folder of tables")
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                   help="only these training sets of a mini-MMEB folder (default: all with a GIC target)")
    p.add_argument("--limit", type=int, default=limit,
                   help=f"samples with a GIC target per dataset (default {limit})")
    p.add_argument("--ntp-side", default="positive", choices=["positive", "query", "both"],
                   help="which side's text is the target, for a plain MMEB-train table (default positive: the "
                        "query's BToks generate the positive text)")


# ---------------------------------------------------------------- analyze


def add_analyze_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    a = sub.add_parser(
        "attention", help="share of target-token attention on query / BToks / earlier targets, with and without "
                          "the Condensation Mask; the BToks' split over text vs vision tokens",
        description="Per layer and head: where target tokens put their attention (query X, BToks B, earlier "
                    "target T) under the Condensation Mask and under a plain causal mask over [X|B|T], and "
                    "where the BToks put theirs (text vs vision tokens of X, other BToks). Writes "
                    "attention.json, attention_summary.png and attention_layer<N>.png per layer.")
    _common_model_args(a)
    _data_args(a, required=True, limit=8)
    a.add_argument("--out", default="runs/analysis/attention", help="output folder (default runs/analysis/attention)")
    a.add_argument("--batch-size", type=positive_int, default=4, help="samples per forward pass (default 4)")
    a.add_argument("--layers", type=int, nargs="+", default=None, metavar="L",
                   help="write the per-layer heatmap only for these layers (default: every layer)")


def run_analyze(args: argparse.Namespace) -> int:
    from btoks.analysis.attention import analyze_attention, write_attention_report
    from btoks.analysis.common import load_gic_samples
    from btoks.loading import load

    if args.analysis != "attention":  # pragma: no cover - argparse restricts the choices
        raise ValueError(f"unknown analysis {args.analysis!r}")
    samples = load_gic_samples(args.data, datasets=args.datasets, limit=args.limit, ntp_side=args.ntp_side)
    model = load(args.model, num_btoks=args.num_btoks, eager=True, device=args.device, merge=False)
    counts: dict[str, int] = {}
    for g in samples:
        counts[g.dataset] = counts.get(g.dataset, 0) + 1
    print(f"analysing {len(samples)} samples from {len(counts)} dataset(s) with K={model.config.num_btoks}")
    result = analyze_attention(model, samples, batch_size=args.batch_size, model_name=str(args.model))
    result["data"] = str(args.data)
    files = write_attention_report(result, args.out, args.layers)
    ov = result["overall"]
    print(f"target-token attention share on the query: masked {ov['masked']['query']:.3g} "
          f"(max single weight {result['masked_query_max']:.3g}), unmasked {ov['unmasked']['query']:.3f}; "
          f"on the BToks: masked {ov['masked']['btoks']:.3f}, unmasked {ov['unmasked']['btoks']:.3f}")
    if "btok_with_vision" in ov:
        bv = ov["btok_with_vision"]
        print(f"BTok attention on vision tokens: {bv['vision']:.3f} (text {bv['text']:.3f}, btoks {bv['btoks']:.3f}; "
              f"vision tokens are {ov['vision_fraction_with_vision']:.2f} of the input)")
    print(f"wrote {len(files)} files to {args.out}")
    return 0


# ---------------------------------------------------------------- decode


def add_decode_args(p: argparse.ArgumentParser) -> None:
    _common_model_args(p)
    p.add_argument("input", nargs="?", default=None,
                   help="input text (use <image> to place an image given with --image); omit with --data")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="image file for the input (repeat for several; placed before the text without <image>)")
    p.add_argument("--instruction", default="", help="instruction prepended to the input text (VLM2Vec style)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens to generate at most (default 32)")
    p.add_argument("--kv-mode", choices=["compressed", "full"], default="compressed",
                   help="compressed: BTok-only cache (what the bottleneck kept, default); full: the whole input "
                        "cache (control)")
    _data_args(p, required=False, limit=4)
    p.add_argument("--out", default=None, help="also write the decoded texts as JSON to this file")


def run_decode(args: argparse.Namespace) -> int:
    from btoks.analysis.common import load_gic_samples
    from btoks.analysis.decode import decode_btoks
    from btoks.data.sample import Sample
    from btoks.loading import load

    if (args.input is None) == (args.data is None):
        raise ValueError("give either INPUT (text, optionally with --image) or --data DIR, not both or neither")
    rows: list[tuple[str, Sample]] = []
    if args.data is not None:
        if args.image:
            raise ValueError("--image goes with INPUT, not with --data")
        rows = [(g.dataset, g.sample) for g in load_gic_samples(args.data, datasets=args.datasets,
                                                                limit=args.limit, ntp_side=args.ntp_side)]
    else:
        from btoks.data.media import load_image

        images = []
        for path in args.image:
            if not Path(path).is_file():
                raise FileNotFoundError(f"image {path} not found")
            images.append(load_image(path))
        rows = [("input", Sample(text=args.input, instruction=args.instruction, images=images))]
    model = load(args.model, num_btoks=args.num_btoks, device=args.device, merge=False)
    texts = decode_btoks(model, [s for _, s in rows], args.max_new_tokens, kv_mode=args.kv_mode)
    records = []
    for (ds, s), text in zip(rows, texts, strict=True):
        records.append({"dataset": ds, "id": s.id, "input": s.prompt, "target": s.target, "decoded": text})
        if args.data is None:
            print(text)
        else:
            print(f"[{ds}] {s.id}\n  target:  {s.target!r}\n  decoded: {text!r}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": str(args.model), "kv_mode": args.kv_mode,
                                              "max_new_tokens": args.max_new_tokens, "samples": records},
                                             indent=1), encoding="utf-8")
    return 0


def add_ablate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML TrainConfig shared by every cell: a file, or a preset name shipped with "
                                  "btoks (mini-quick, mini-full)")
    p.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                   help='axes of the grid, dotted TrainConfig keys with comma-separated values, e.g. '
                        '"btoks.num_btoks=0,1,4 btoks.gen_weight=0,5" (cartesian product; K=0 is last-token '
                        "pooling; mask on/off: btoks.kv_mode=compressed,full; pooling: btoks.pooling=...)")
    p.add_argument("--eval-data", required=True,
                   help="evaluation data folder (a mini-MMEB folder or MMEB-V2 layout, as for btoks eval)")
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                   help="evaluate only these datasets (default: all found in --eval-data)")
    p.add_argument("--out", default="runs/ablate", help="output folder, one subfolder per cell (default runs/ablate)")
    p.add_argument("--reference", default=None, metavar="CELL",
                   help="cell the others are tested against: its name (num_btoks=4__gen_weight=5) or settings "
                        "(num_btoks=4,gen_weight=5); default: the first cell")
    p.add_argument("--set", dest="common", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides applied to every cell, e.g. max_steps=200 (keeps the grid matched)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="evaluation batch size (default 16)")
    p.add_argument("--resamples", type=positive_int, default=2000, help="paired bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their overrides, then exit")


def run_ablate(args: argparse.Namespace) -> int:
    from btoks.analysis.ablate import ablate, find_cell, make_cells, parse_grid
    from btoks.eval.compare import format_p

    if args.dry_run:
        cells = make_cells(parse_grid(args.grid))
        ref = find_cell(cells, args.reference)
        for c in cells:
            print(f"{c.name}{'  (reference)' if c is ref else ''}: {' '.join([*args.common, *c.overrides])}")
        return 0
    res = ablate(args.config, args.grid, args.eval_data, args.out, datasets=args.datasets,
                 reference=args.reference, common=args.common, batch_size=args.batch_size,
                 n_resamples=args.resamples, seed=args.seed)
    for name, t in res["tests"].items():
        if "delta" in t:
            print(f"{name} vs {res['reference']}: Δ Overall {t['delta']:+.2f} [{t['lo']:+.2f}, {t['hi']:+.2f}], "
                  f"Wilcoxon p={format_p(t['wilcoxon_p'])}")
    return 0
