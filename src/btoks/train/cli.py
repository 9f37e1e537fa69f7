"""``btoks train CONFIG [key=value ...]``."""

from __future__ import annotations

import argparse


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (e.g. configs/qwen2vl-2b-btoks.yaml) or a shipped preset name "
                   "(mini-quick, mini-full)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override preset values with dotted keys, e.g. max_steps=100 btoks.num_btoks=8 "
                        "btoks.kv_mode=full lora=false")
    p.add_argument("--output-dir", help="where checkpoints, log.jsonl and the final model/ go "
                                        "(default: output_dir from the preset)")
    p.add_argument("--no-resume", action="store_true",
                   help="start from scratch: delete the checkpoints and log.jsonl of the run already in OUTPUT_DIR "
                        "(without it a run resumes, and a changed configuration is refused)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    from btoks.train.config import FIELD_HELP

    fields = "\n".join(f"  {k:<52} {v}" for k, v in FIELD_HELP.items())
    p.epilog = (f"preset keys (override any with KEY=VALUE):\n{fields}\n\n"
                "multi-process: accelerate launch --num_processes N -m btoks.cli train CONFIG\n"
                "(in-batch negatives are gathered across processes)")


def run_train(args: argparse.Namespace) -> int:
    import json

    from btoks.train.config import TrainConfig

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.no_resume:
        overrides.append("resume=false")
    cfg = TrainConfig.from_yaml(args.config, overrides)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2, default=str))
        return 0
    from btoks.train.trainer import train

    train(cfg)
    print(f"model saved to {cfg.output_dir}/model")
    return 0
