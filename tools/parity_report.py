"""Measure btoks against the authors' fixtures (tests/fixtures/parity): the agreement of the paper preset per
case, and how far each documented alternative setting moves the result (the numbers in docs/parity.md).

    PYTHONPATH=src python tools/parity_report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from btoks.train.step import compute_gradients, prepare_batch  # noqa: E402
from tests.test_parity import FIX, meta, paper_model, preset, samples  # noqa: E402

OPTIONS = {  # setting → alternative value (btoks' former behaviour)
    "gic_target": "text",
    "gic_positions": "continue",
    "gen_loss_norm": "batch",
    "gen_sides": "mean",
}


def run(name: str, overrides: dict | None = None, sort: bool | None = None) -> dict[str, float]:
    case = meta()["cases"][name]
    model = paper_model(case)
    model.config.kv_mode = case["kv_mode"]
    for key, value in (overrides or {}).items():
        setattr(model.config, key, value)
    queries, positives = samples(case)
    model.eval()
    emb = max(float((model.embed(b) - torch.tensor(case["embeddings"][s])).abs().max())
              for s, b in (("query", queries), ("positive", positives)))
    model.train()
    model.zero_grad()
    batch = prepare_batch(model, queries, positives, chunk_size=case["chunk"],
                          sort_by_length=preset().sort_by_length if sort is None else sort)
    losses = compute_gradients(model, batch, meta()["gen_weight"], temperature=meta()["temperature"])
    hf = model.peft_model.base_model.model if case["lora"] else model.backbone.model
    got = {n: p.grad for n, p in hf.named_parameters() if p.grad is not None}
    worst = 0.0
    for key, ref in load_file(FIX / f"grads_{name}.safetensors").items():
        grad = {"btok_rows": lambda: got["model.language_model.embed_tokens.weight"][model.btok_ids],
                "lm_head_btok_rows": lambda: got["lm_head.weight"][model.btok_ids]}.get(key, lambda k=key: got[k])()
        worst = max(worst, float((grad - ref).norm() / ref.norm().clamp(min=1e-12)))
    return {"emb": emb, "con": abs(losses.contrastive - case["contrastive"]), "gen_ref": case["generative"],
            "gen": losses.generative, "gen_err": abs(losses.generative - case["generative"]), "grad_rel": worst}


def main() -> None:
    torch.set_num_threads(1)
    print("| case | max abs Δ embedding | Δ InfoNCE | GIC loss (authors) | Δ GIC | max rel Δ gradient |")
    print("|---|---|---|---|---|---|")
    for name in sorted(meta()["cases"]):
        r = run(name)
        print(f"| {name} | {r['emb']:.1e} | {r['con']:.1e} | {r['gen_ref']:.4f} | {r['gen_err']:.1e} | "
              f"{r['grad_rel']:.1e} |")
    print("\n| setting (alternative) | case | GIC loss: authors → alternative | max rel Δ gradient |")
    print("|---|---|---|---|")
    for key, value in OPTIONS.items():
        for name in ("both_sides", "gradcache_chunk2"):
            r = run(name, {key: value})
            print(f"| {key}={value} | {name} | {r['gen_ref']:.4f} → {r['gen']:.4f} | {r['grad_rel']:.2e} |")
    for name in ("gradcache_chunk2",):
        r = run(name, sort=False)
        print(f"| sort_by_length=false | {name} | {r['gen_ref']:.4f} → {r['gen']:.4f} | {r['grad_rel']:.2e} |")


if __name__ == "__main__":
    main()
