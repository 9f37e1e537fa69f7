"""Heal + align ``btoks-mini`` into a working small VLM (LLaVA stage-1/2 style), and the delta that stores it.

The composed model (SmolLM2 cut to a few layers + EfficientNet + a random projector) is not a language model
any more (target CE ~15 nats/token) and its vision tokens mean nothing to the decoder. One short generative
training run fixes both: LoRA on the decoder plus the projector, next-token loss on

* captions, labels and answers of the mini-MMEB *training* split, generated from the side that carries the
  media (image/frames + instruction -> ``<|im_start|>assistant\\n`` caption ``<|im_end|>``, the GIC wrapping);
* plain text (gensim's Lee background news corpus), so the decoder heals as a language model, not only on
  templated captions.

The result is a small *delta* (projector weights + LoRA factors, safetensors) that ``load_mini`` applies to the
composed model; :func:`save_delta` / :func:`apply_delta` are its format. ``tools/heal_mini.py`` reproduces the
shipped delta; :func:`heldout_ce` measures the claim (held-out target CE on the mini-MMEB test split).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from btoks.data.sample import Sample

PREFIX, SUFFIX = "<|im_start|>assistant\n", "<|im_end|>"
DELTA_FORMAT = "btoks-mini-delta/1"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Example:
    """One generative example: the input side (text + media) and the clean text it should produce."""

    sample: Sample
    target: str
    dataset: str = ""


# ---------------------------------------------------------------------------------------------- examples


def mini_mmeb_examples(data_root: str | Path, split: str = "train", *, skip: Sequence[str] = (),
                       limit_per_set: int | None = None) -> list[Example]:
    """Generative examples of a mini-MMEB build: the side that carries media produces the row's clean text.

    ``train``: each training row's ``ntp_target`` from the side the set's ``ntp_side`` names. ``test``: the
    query (or, for ``query``-side sets, the positive candidate) with the positive's (query's) clean text.
    Visual-document and ``none`` sets are skipped (no text to generate from a page the model cannot read).
    """
    from btoks.data.readers import read_eval_local, read_train

    root = Path(data_root)
    manifest = json.loads((root / "manifest.json").read_text())
    out: list[Example] = []
    if split == "train":
        for entry in manifest["train"]:
            if entry["ntp_side"] not in ("positive", "query") or entry["modality"] == "visdoc" or entry["name"] in skip:
                continue
            pairs = read_train(root / entry["path"], dataset=entry["name"], root=root, ntp_side=entry["ntp_side"],
                               limit=limit_per_set, progress=False)
            for pair in pairs:
                side = pair.query if entry["ntp_side"] == "positive" else pair.positive
                if side.target:
                    out.append(Example(side, side.target, entry["name"]))
        return out
    for entry in manifest["datasets"]:
        if entry["ntp_side"] not in ("positive", "query") or entry["format"] != "local" or entry["name"] in skip:
            continue
        data = read_eval_local(root / entry["path"], dataset=entry["name"], root=root, progress=False,
                               limit=limit_per_set)
        for i in range(len(data)):
            query, pos = data.queries[i], data.candidates[i][0]
            src, tgt = (query, pos) if entry["ntp_side"] == "positive" else (pos, query)
            text = _clean(tgt.text)
            if text:
                out.append(Example(src, text, entry["name"]))
    return out


def swap_media(examples: Sequence[Example]) -> list[Example]:
    """The same examples with each one's media taken from the next example of the same set (a control: the
    CE gap between true and swapped media is what the vision tokens contribute)."""
    by_set: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_set.setdefault(ex.dataset, []).append(i)
    out = list(examples)
    for idx in by_set.values():
        for a, b in zip(idx, idx[1:] + idx[:1], strict=True):
            donor = examples[b].sample
            out[a] = Example(replace(examples[a].sample, images=donor.images, video=donor.video), examples[a].target,
                             examples[a].dataset)
    return out


def _clean(text: str) -> str:
    from btoks.data.readers import plain_text

    return plain_text(text).strip().strip('"')


def text_examples(split: str = "train", chunk_words: int = 24, limit: int | None = None) -> list[Example]:
    """Plain-text LM examples: Lee news documents cut into ``chunk_words``-word chunks (background docs for
    training, the 50 rated documents held out)."""
    from btoks.data.mini_mmeb import Sources

    docs = Sources().lee["train" if split == "train" else "test"]
    out = []
    for d, doc in enumerate(docs):
        words = doc.split()
        for i in range(0, max(1, len(words) - 8), chunk_words):
            out.append(Example(Sample(), " ".join(words[i : i + chunk_words]), f"lee/{d}"))
    return out[:limit] if limit is not None else out


# ---------------------------------------------------------------------------------------------- batching


@dataclass
class GenBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    media: dict[str, torch.Tensor]


def collate(backbone: Any, examples: Sequence[Example], max_target: int = 64) -> GenBatch:
    """Right-padded ``input + <|im_start|>assistant\\n + target + <|im_end|>``; labels only on target + end.

    A text-only example has no input: the whole chunk is the target (plain language modelling).
    """
    tok = backbone.tokenizer
    prefix = tok(PREFIX, add_special_tokens=False)["input_ids"]
    end = tok.convert_tokens_to_ids(SUFFIX)
    rows, parts = [], []
    for ex in examples:
        target = tok(ex.target, add_special_tokens=False)["input_ids"][:max_target]
        if ex.sample.prompt or ex.sample.images or ex.sample.video:
            segments, media = backbone.sample_segments(ex.sample)
            ids = [i for s in segments for i in s.ids] + prefix
            if media:
                parts.append(media)
            rows.append((ids + target + [end], len(ids)))
        else:
            rows.append(([*target, end], 0))
    width = max(len(ids) for ids, _ in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, start) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
        labels[r, start : len(ids)] = input_ids[r, start : len(ids)]
        if start == 0:
            labels[r, 0] = -100  # nothing predicts the first token of a text chunk
    return GenBatch(input_ids, mask, labels, backbone.merge_media(parts) if parts else {})


def token_loss(backbone: Any, batch: GenBatch) -> tuple[torch.Tensor, int]:
    """Mean next-token CE over labelled positions (LM head only where a label exists) and their count."""
    out = backbone.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.media)
    hidden = out.last_hidden_state[:, :-1]
    labels = batch.labels[:, 1:]
    keep = labels != -100
    logits = backbone.model.lm_head(hidden[keep])
    n = int(keep.sum())
    return F.cross_entropy(logits.float(), labels[keep]), n


@torch.no_grad()
def heldout_ce(backbone: Any, examples: Sequence[Example], batch_size: int = 16,
               progress: bool = False) -> dict[str, float]:
    """Token-weighted CE (nats/token) per dataset and overall (``_all``) on ``examples``, model in eval mode."""
    from tqdm.auto import tqdm

    backbone.model.eval()
    sums: dict[str, list[float]] = {}
    starts = range(0, len(examples), batch_size)
    for s in tqdm(starts, desc="held-out CE", disable=not progress, leave=False):
        chunk = examples[s : s + batch_size]
        for ex in chunk:  # per-dataset sums: evaluate each example's tokens separately within the batch
            sums.setdefault(_group(ex.dataset), [0.0, 0.0])
        batch = collate(backbone, chunk)
        out = backbone.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.media)
        labels = batch.labels[:, 1:]
        keep = labels != -100
        logits = backbone.model.lm_head(out.last_hidden_state[:, :-1][keep]).float()
        ce = F.cross_entropy(logits, labels[keep], reduction="none")
        rows = keep.nonzero()[:, 0]
        for r, ex in enumerate(chunk):
            acc = sums[_group(ex.dataset)]
            acc[0] += float(ce[rows == r].sum())
            acc[1] += int((rows == r).sum())
    result = {k: v[0] / max(v[1], 1) for k, v in sorted(sums.items())}
    total = sum(v[0] for v in sums.values()), sum(v[1] for v in sums.values())
    result["_all"] = total[0] / max(total[1], 1)
    return result


def _group(dataset: str) -> str:
    return "lee-text" if dataset.startswith("lee/") else dataset


# ---------------------------------------------------------------------------------------------- the delta


def lora_modules(backbone: Any) -> dict[str, nn.Linear]:
    """The decoder's linear layers LoRA heals, by their name inside ``language_model``."""
    lm = backbone.model.model.language_model
    return {name: m for name, m in lm.named_modules() if isinstance(m, nn.Linear) and name.split(".")[-1] in LORA_TARGETS}


class LoRA(nn.Module):
    """``y = W x + scale · B A x`` around a frozen linear layer (plain torch: merged into W afterwards)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scale


def attach_lora(backbone: Any, rank: int, alpha: float, seed: int = 0) -> dict[str, LoRA]:
    """Wrap every healed linear layer in :class:`LoRA` in place; returns the wrappers by name."""
    lm = backbone.model.model.language_model
    gen = torch.Generator().manual_seed(seed)
    wrapped = {}
    for name, base in lora_modules(backbone).items():
        parent_name, _, child = name.rpartition(".")
        wrapper = LoRA(base, rank, alpha, gen)
        setattr(lm.get_submodule(parent_name), child, wrapper)
        wrapped[name] = wrapper
    return wrapped


def detach_lora(backbone: Any, wrapped: dict[str, LoRA]) -> None:
    """Put the original linear layers back (unmerged)."""
    lm = backbone.model.model.language_model
    for name, wrapper in wrapped.items():
        parent_name, _, child = name.rpartition(".")
        setattr(lm.get_submodule(parent_name), child, wrapper.base)


def save_delta(path: str | Path, backbone: Any, wrapped: dict[str, LoRA], meta: dict[str, Any]) -> None:
    """Projector weights + LoRA factors (fp16) + provenance metadata as one safetensors file."""
    tensors = {f"projector.{k}": v.detach().to(torch.float16).contiguous()
               for k, v in backbone.model.model.projector.state_dict().items()}
    for name, w in wrapped.items():
        tensors[f"lora.{name}.A"] = w.A.detach().to(torch.float16).contiguous()
        tensors[f"lora.{name}.B"] = (w.B.detach() * w.scale).to(torch.float16).contiguous()
    info = {"format": DELTA_FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    save_file(tensors, str(path), metadata=info)


def delta_meta(path: str | Path) -> dict[str, Any]:
    """The provenance metadata stored in a delta file."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    if meta.pop("format", None) != DELTA_FORMAT:
        raise ValueError(f"{path}: not a {DELTA_FORMAT} file")
    return {k: json.loads(v) for k, v in meta.items()}


@torch.no_grad()
def apply_delta(backbone: Any, path: str | Path, parts: Sequence[str] = ("projector", "lora")) -> dict[str, Any]:
    """Load the projector and/or merge ``W += B A`` into the decoder (``parts``); returns the delta's metadata.

    The file must match the model (layer count, hidden size); a mismatch is one clear error.
    """
    meta = delta_meta(path)
    layers = backbone.model.config.text_config.num_hidden_layers
    if meta.get("num_layers") not in (None, layers):
        raise ValueError(f"{path}: delta is for {meta['num_layers']} decoder layers, the model has {layers}")
    tensors = load_file(str(path))
    if unknown := set(parts) - {"projector", "lora"}:
        raise ValueError(f"delta parts must be 'projector' and/or 'lora', not {sorted(unknown)}")
    if "projector" in parts:
        proj = {k.removeprefix("projector."): v.float() for k, v in tensors.items() if k.startswith("projector.")}
        backbone.model.model.projector.load_state_dict(proj, strict=True)
    if "lora" not in parts:
        return meta
    modules = lora_modules(backbone)
    names = {k.removeprefix("lora.").rsplit(".", 1)[0] for k in tensors if k.startswith("lora.")}
    if names - modules.keys():
        raise ValueError(f"{path}: LoRA for unknown modules {sorted(names - modules.keys())[:3]}")
    for name in names:
        a, b = tensors[f"lora.{name}.A"].float(), tensors[f"lora.{name}.B"].float()
        modules[name].weight += b @ a
    return meta


# ---------------------------------------------------------------------------------------------- training


@dataclass
class HealConfig:
    steps: int = 150
    batch_size: int = 12
    text_fraction: float = 0.17
    lr: float = 2e-3
    rank: int = 16
    alpha: float = 32.0
    warmup: int = 20
    seed: int = 0
    max_target: int = 48


def _mixed_batches(media: Sequence[Example], text: Sequence[Example], cfg: HealConfig) -> Iterator[list[Example]]:
    rng = np.random.default_rng(cfg.seed)
    n_text = round(cfg.batch_size * cfg.text_fraction) if text else 0
    while True:
        picks = [media[i] for i in rng.integers(len(media), size=cfg.batch_size - n_text)]
        picks += [text[i] for i in rng.integers(len(text), size=n_text)] if n_text else []
        yield picks


def heal(backbone: Any, media: Sequence[Example], text: Sequence[Example], cfg: HealConfig,
         log: Any = print) -> tuple[dict[str, LoRA], list[dict[str, float]]]:
    """Train LoRA (decoder) + projector on the generative examples; returns the LoRA wrappers and the log.

    The vision tower stays frozen; everything else in the decoder is frozen under its LoRA.
    """
    from tqdm.auto import tqdm

    model = backbone.model
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = attach_lora(backbone, cfg.rank, cfg.alpha, cfg.seed)
    proj = list(model.model.projector.parameters())
    for p in proj:
        p.requires_grad_(True)
    lora_params = [p for w in wrapped.values() for p in (w.A, w.B)]
    opt = torch.optim.AdamW([{"params": lora_params}, {"params": proj}], lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)) * max(0.0, 1 - s / cfg.steps))
    model.train()
    history = []
    batches = _mixed_batches(media, text, cfg)
    bar = tqdm(range(cfg.steps), desc="heal + align", unit="step")
    t0 = time.perf_counter()
    for step in bar:
        batch = collate(backbone, next(batches), cfg.max_target)
        loss, n = token_loss(backbone, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_params + proj, 1.0)
        opt.step()
        sched.step()
        history.append({"step": step + 1, "loss": loss.item(), "tokens": n, "s": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
        if (step + 1) % 25 == 0:
            log(f"step {step + 1}: loss {np.mean([h['loss'] for h in history[-25:]]):.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return wrapped, history


__all__ = ["DELTA_FORMAT", "Example", "HealConfig", "apply_delta", "collate", "delta_meta", "heal", "heldout_ce",
           "mini_mmeb_examples", "save_delta", "swap_media", "text_examples", "token_loss"]
