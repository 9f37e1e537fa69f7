"""Where does attention go? Target tokens vs query / BToks, with and without the Condensation Mask.

One pass over ``[X | B | T]`` per mask (the explicit-mask layout of ``BToksModel._forward_explicit``) with eager
attention returns every layer's attention weights. Per layer and head we measure, averaged over the valid
target tokens of a sample and then over samples:

* target rows → columns of the **query** X (text and vision tokens), the K **BToks**, and the **target** itself
  (earlier target tokens and the token itself); the three shares sum to 1. ``masked`` uses the Condensation
  Mask (kv_mode ``compressed``), ``unmasked`` a plain causal mask over ``[X|B|T]`` (kv_mode ``full``, the
  "no mask" ablation). With the mask the query share must be exactly 0: checked on every batch.
* BTok rows → the input's **text** tokens, its **vision** tokens (``backbone.vision_token_ids``) and the
  **btoks** (earlier BToks and itself). BTok rows see the same columns under both masks.
* the share on single "sink" tokens, which decoder LMs park attention on: the first X token (unmasked target
  rows, BTok rows) and the first target token (masked target rows, whose usual sink is masked away).

``vision_fraction`` (the share of X tokens that are vision tokens) is the vision share a BTok would have if it
spread its X-attention uniformly: the baseline to read the BTok split against. Targets longer than
``target_max_length`` are truncated (as ``truncate_targets`` would in training).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from btoks.analysis.common import GicSample, batched
from btoks.masks import to_additive
from btoks.model import BToksModel

SCHEMA = "btoks.analysis.attention/v1"
TARGET_GROUPS = ("query", "btoks", "target")
BTOK_GROUPS = ("text", "vision", "btoks")
MODES = {"masked": "compressed", "unmasked": "full"}


class MaskLeakError(RuntimeError):
    """Target tokens put attention on the query although the Condensation Mask forbids it."""


def _shares(att: torch.Tensor, rows: torch.Tensor, cols: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(n, H, len(cols))``: mean over ``rows`` of the attention mass on each column group."""
    rows_f = rows.to(att.dtype)
    per_group = [torch.einsum("nhqk,nk->nhq", att, c.to(att.dtype)) for c in cols]
    count = rows_f.sum(-1).clamp(min=1)[:, None]
    return torch.stack([torch.einsum("nhq,nq->nh", m, rows_f) / count for m in per_group], dim=-1)


@torch.no_grad()
def attention_shares(model: BToksModel, samples: Sequence[Any]) -> dict[str, np.ndarray]:
    """Shares for one batch of samples with targets (see the module docstring).

    Returns ``masked`` and ``unmasked`` ``(n, layers, heads, 3)`` over :data:`TARGET_GROUPS`, ``btok``
    ``(n, layers, heads, 3)`` over :data:`BTOK_GROUPS`, ``unmasked_first`` ``(n, layers, heads)`` (unmasked
    share on the first input token alone), ``vision_fraction`` ``(n,)`` and ``masked_query_max``
    (the largest single attention weight from a target token to a query token under the mask: 0).
    """
    k = model.config.num_btoks
    if k == 0:
        raise ValueError("attention analysis needs BToks: the model has num_btoks=0 (last-token pooling)")
    missing = [s.id or str(i) for i, s in enumerate(samples) if not s.target]
    if missing:
        raise ValueError(f"samples without a GIC target: {', '.join(missing[:5])}")
    device = model.device
    inputs = model.prepare(list(samples)).to(device)
    truncate, model.config.truncate_targets = model.config.truncate_targets, True  # analyse long targets too
    try:
        targets = model.prepare_targets([s.target for s in samples], ids=[s.id for s in samples])
    finally:
        model.config.truncate_targets = truncate
    assert targets is not None  # every sample has a target (checked above)
    targets = targets.to(device)
    lxb = inputs.input_ids.shape[1]
    width = targets.input_ids.shape[1]
    seqs = {mode: model.build_sequence(inputs, targets, kv_mode) for mode, kv_mode in MODES.items()}
    first = next(iter(seqs.values()))
    ids, valid = first.input_ids, first.valid
    col = torch.arange(lxb + width, device=device)[None]
    is_x = (col < lxb - k) & valid
    is_b = (col >= lxb - k) & (col < lxb) & valid
    is_t = (col >= lxb) & valid
    vision_ids = torch.tensor(sorted(model.backbone.vision_token_ids), dtype=torch.long, device=device)
    is_vis = is_x & torch.isin(ids, vision_ids)
    is_text = is_x & ~is_vis
    is_first = is_x & (is_x.long().cumsum(1) == 1)  # the first input token: the usual attention sink
    is_t_first = is_t & (is_t.long().cumsum(1) == 1)  # the first target token: the sink once X is masked
    out: dict[str, list[torch.Tensor]] = defaultdict(list)
    leak = 0.0
    for mode, seq in seqs.items():
        res = model.backbone.forward(ids, to_additive(seq.mask, model.dtype), seq.position_ids, seq.media,
                                     output_attentions=True)
        attentions = getattr(res, "attentions", None)
        if not attentions or any(a is None for a in attentions):
            raise ValueError("the backbone returned no attention weights: load it with eager attention "
                             "(btoks.load(..., eager=True))")
        for att in attentions:
            att = att.float()
            out[mode].append(_shares(att, is_t, (is_x, is_b, is_t)))
            if mode == "unmasked":
                out["unmasked_first"].append(_shares(att, is_t, (is_first,))[..., 0])
            else:
                out["masked_first"].append(_shares(att, is_t, (is_t_first,))[..., 0])
            if mode == "masked":
                worst = float((att * is_t[:, None, :, None] * is_x[:, None, None, :]).max())
                leak = max(leak, worst)
                if worst != 0.0:  # exactly 0: blocked scores are dtype-min, so exp() underflows to 0
                    raise MaskLeakError(f"target tokens attend to the query under the Condensation Mask "
                                        f"(max weight {worst:.3g}): the mask is not applied by this backbone")
                out["btok"].append(_shares(att, is_b, (is_text, is_vis, is_b)))
                out["btok_first"].append(_shares(att, is_b, (is_first,))[..., 0])
    result = {key: torch.stack(v, dim=1).cpu().numpy() for key, v in out.items()}
    result["vision_fraction"] = (is_vis.sum(1) / is_x.sum(1).clamp(min=1)).float().cpu().numpy()
    result["masked_query_max"] = np.float64(leak)
    return result


def _groups(a: np.ndarray, groups: Sequence[str], reduce: Callable[[np.ndarray], Any]) -> dict[str, Any]:
    """``{group: reduce(share)}`` over the last axis of ``a`` (one column per group)."""
    return {g: reduce(a[..., i]) for i, g in enumerate(groups)}


def _group_dict(arr: np.ndarray, groups: Sequence[str]) -> dict[str, list]:
    """``(layers, heads, G)`` → ``{group: [[per head] per layer]}`` (JSON-able, rounded)."""
    return _groups(arr, groups, lambda a: np.round(a, 6).tolist())


def _per_layer(a: np.ndarray) -> list[float]:
    """Mean over samples and heads of a ``(samples, layers, heads)`` share: one value per layer."""
    return a.mean(axis=(0, 2)).round(6).tolist()


def _scalar(a: np.ndarray) -> float:
    return round(float(a.mean()), 6)


def _aggregate(arr: dict[str, np.ndarray], reduce: Callable[[np.ndarray], Any], sel: Any = slice(None), *,
               sinks: bool = False) -> dict[str, Any]:
    """Target shares per mask mode and BTok shares of the samples ``sel``, reduced by ``reduce``; with
    ``sinks`` also the single-token (attention sink) shares."""
    out: dict[str, Any] = {mode: _groups(arr[mode][sel], TARGET_GROUPS, reduce) for mode in MODES}
    out["btok"] = _groups(arr["btok"][sel], BTOK_GROUPS, reduce)
    if sinks:
        out["unmasked"]["query_first_token"] = reduce(arr["unmasked_first"][sel])
        out["masked"]["target_first_token"] = reduce(arr["masked_first"][sel])
        out["btok"]["first_token"] = reduce(arr["btok_first"][sel])
    return out


def analyze_attention(model: BToksModel, samples: Sequence[GicSample], *, batch_size: int = 4,
                      progress: bool = True, model_name: str = "") -> dict[str, Any]:
    """Run :func:`attention_shares` over all samples and aggregate (mean over samples; JSON-able dict)."""
    if not samples:
        raise ValueError("no samples to analyse")
    model.eval()
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    names: list[str] = []
    leak = 0.0
    for batch in tqdm(batched(list(samples), batch_size), desc="attention", unit="batch", disable=not progress):
        res = attention_shares(model, [g.sample for g in batch])
        leak = max(leak, float(res.pop("masked_query_max")))
        for key, v in res.items():
            parts[key].append(v)
        names += [g.dataset for g in batch]
    arr = {key: np.concatenate(v) for key, v in parts.items()}
    n, layers, heads, _ = arr["masked"].shape
    with_vision = arr["vision_fraction"] > 0
    summary = _aggregate(arr, _per_layer, sinks=True)
    if with_vision.any():  # the text/vision split only means something for samples that have vision tokens
        summary["btok_with_vision"] = _groups(arr["btok"][with_vision], BTOK_GROUPS, _per_layer)
        summary["btok_with_vision"]["first_token"] = _per_layer(arr["btok_first"][with_vision])
    per_dataset: dict[str, Any] = {}
    name_arr = np.array(names)
    for ds in dict.fromkeys(names):
        sel = name_arr == ds
        per_dataset[ds] = {"n_samples": int(sel.sum()), **_aggregate(arr, _scalar, sel),
                           "vision_fraction": _scalar(arr["vision_fraction"][sel])}
    overall = _aggregate(arr, _scalar, sinks=True)
    overall["vision_fraction"] = _scalar(arr["vision_fraction"])
    if with_vision.any():
        overall["btok_with_vision"] = _groups(arr["btok"][with_vision], BTOK_GROUPS, _scalar)
        overall["vision_fraction_with_vision"] = _scalar(arr["vision_fraction"][with_vision])
    per_layer_head = {mode: _group_dict(arr[mode].mean(0), TARGET_GROUPS) for mode in MODES}
    per_layer_head["btok"] = _group_dict(arr["btok"].mean(0), BTOK_GROUPS)
    if with_vision.any():
        per_layer_head["btok_with_vision"] = _group_dict(arr["btok"][with_vision].mean(0), BTOK_GROUPS)
    return {
        "schema": SCHEMA,
        "model": model_name,
        "num_btoks": model.config.num_btoks,
        "kv_mode_trained": model.config.kv_mode,
        "num_layers": layers,
        "num_heads": heads,
        "n_samples": n,
        "n_samples_with_vision": int(with_vision.sum()),
        "masked_query_max": leak,
        "definitions": {
            "target": "target-token rows; shares over query (X) / btoks (B) / target (earlier T and itself)",
            "btok": "BTok rows; shares over text tokens of X / vision tokens of X / btoks (earlier B and itself)",
            "masked": "Condensation Mask (kv_mode compressed)",
            "unmasked": "plain causal mask over [X|B|T] (kv_mode full)",
            "vision_fraction": "fraction of X tokens that are vision tokens (uniform-attention baseline)",
            "query_first_token": "unmasked target rows' share on the first X token alone (attention sink)",
            "target_first_token": "masked target rows' share on the first target token alone (the sink once X "
                                  "is masked)",
            "first_token": "BTok rows' share on the first X token alone (part of 'text')",
            "averaging": "mean over a sample's valid rows, then over samples (and heads for summaries)",
        },
        "overall": overall,
        "per_layer": summary,
        "per_dataset": per_dataset,
        "per_layer_head": per_layer_head,
    }


# ---------------------------------------------------------------- reports


def _heatmap(ax: Any, data: np.ndarray, cols: Sequence[str], title: str, annotate: bool) -> Any:
    im = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(data.shape[0]), [str(h) for h in range(data.shape[0])], fontsize=7)
    ax.set_title(title, fontsize=9)
    if annotate:
        for (r, c), v in np.ndenumerate(data):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
    return im


def plot_layer(result: dict[str, Any], layer: int, path: str | Path) -> Path:
    """Heads × {query, btoks, target} for both masks, plus the BToks' heads × {text, vision, btoks}."""
    from matplotlib.figure import Figure

    plh = result["per_layer_head"]
    heads = result["num_heads"]
    fig = Figure(figsize=(10, max(2.5, 0.28 * heads + 1.6)), layout="constrained")
    axes = fig.subplots(1, 3)
    annotate = heads <= 32
    im = None
    btok_key, btok_title = ("btok_with_vision", f"BTok tokens ({result['n_samples_with_vision']} samples "
                            "with vision)") if "btok_with_vision" in plh else ("btok", "BTok tokens")
    for ax, (key, groups, title) in zip(axes, (
            ("masked", TARGET_GROUPS, "target tokens, Condensation Mask"),
            ("unmasked", TARGET_GROUPS, "target tokens, plain causal mask"),
            (btok_key, BTOK_GROUPS, btok_title)), strict=True):
        data = np.array([plh[key][g][layer] for g in groups]).T  # (heads, groups)
        im = _heatmap(ax, data, groups, title, annotate)
    axes[0].set_ylabel("head")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="share of attention mass")
    fig.suptitle(f"layer {layer}: attention shares (mean over {result['n_samples']} samples)", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_summary(result: dict[str, Any], path: str | Path) -> Path:
    """Per-layer mean share (over heads and samples): target rows masked vs unmasked, and the BTok split."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    per = result["per_layer"]
    layers = np.arange(result["num_layers"])
    colors = {"query": "#C44E52", "btoks": "#4C72B0", "target": "#55A868",
              "text": "#8172B3", "vision": "#DD8452"}
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for g in TARGET_GROUPS:
        ax1.plot(layers, per["masked"][g], "-o", ms=3, color=colors[g], label=f"{g} (masked)")
        ax1.plot(layers, per["unmasked"][g], "--s", ms=3, color=colors[g], alpha=0.8, label=f"{g} (unmasked)")
    ax1.plot(layers, per["unmasked"]["query_first_token"], ":", color=colors["query"], lw=1.2,
             label="of which 1st query token (unmasked)")
    ax1.plot(layers, per["masked"]["target_first_token"], ":", color=colors["target"], lw=1.2,
             label="of which 1st target token (masked)")
    ax1.set_title("target tokens: solid = Condensation Mask, dashed = plain causal")
    ax1.set_ylabel("mean share of attention mass")
    ax1.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    vision = "btok_with_vision" in per
    btok = per["btok_with_vision"] if vision else per["btok"]
    for g in BTOK_GROUPS:
        ax2.plot(layers, btok[g], "-o", ms=3, color=colors[g], label=g)
    ax2.plot(layers, btok["first_token"], ":", color=colors["text"], lw=1.2, label="of which 1st token")
    if vision:
        vf = result["overall"]["vision_fraction_with_vision"]
        ax2.axhline(vf, color=colors["vision"], ls=":", lw=1.2, label=f"vision tokens' share of X ({vf:.2f})")
        ax2.set_title(f"BTok tokens, the {result['n_samples_with_vision']} samples with vision tokens")
    else:
        ax2.set_title("BTok tokens (no sample has vision tokens)")
    ax2.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    for ax in (ax1, ax2):
        ax.set_xlabel("layer")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    name = result.get("model") or "model"
    fig.suptitle(f"{name}: K={result['num_btoks']}, {result['n_samples']} samples", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_attention_report(result: dict[str, Any], out_dir: str | Path,
                           layers: Sequence[int] | None = None) -> list[Path]:
    """``attention.json``, ``attention_summary.png`` and ``attention_layer<NN>.png`` per layer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_layers = result["num_layers"]
    chosen = list(range(n_layers)) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    path = out / "attention.json"
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    written = [path, plot_summary(result, out / "attention_summary.png")]
    width = len(str(n_layers - 1))
    for i in tqdm(chosen, desc="plots", unit="layer", leave=False, disable=len(chosen) < 8):
        written.append(plot_layer(result, i, out / f"attention_layer{i:0{width}d}.png"))
    return written
