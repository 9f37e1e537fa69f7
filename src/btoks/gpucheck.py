"""``make gpu-check``: the paper's training recipe at Qwen2-VL-2B's exact shape on one GPU, in minutes, offline.

The first thing to run on a GPU machine. Random weights of the real architecture (``presets/arch``), bf16, the
paper recipe (K = 4, GIC on the KV-cache path, DoRA r16 on q/k/v/o/down_proj, GradCache 128 per device in chunks
of 8, AdamW) for a few steps on synthetic MMEB-shaped pairs with realistic pixel counts (``btoks.synthetic``),
with sdpa and, when ``flash_attn`` imports, FlashAttention-2. It writes ``report.json`` and ``report.md``:

* step time and tokens/s; peak memory per phase (GradCache pass 1, pass-2 forward, pass-2 backward, optimiser);
* encode throughput at batch 64 for image and text inputs;
* cache-vs-mask GIC agreement in bf16 (loss, embeddings, gradients);
* with ≥ 2 GPUs: a 2-process step (negatives gathered across ranks, gradients averaged) equals the 1-process
  step on the same global batch.

``--tiny`` runs the same code on CPU with the tiny Qwen2-VL test model in seconds (part of ``make test``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from btoks.backbones.tiny import tiny_tokenizer
from btoks.config import BToksConfig
from btoks.model import BToksModel
from btoks.synthetic import PAPER_PAIRS, TINY_PAIRS, real_shape_backbone, synthetic_pairs

PHASES = ("pass 1 (no graph)", "pass 2 forward", "pass 2 backward", "optimizer")


@dataclass
class Settings:
    tiny: bool = False
    steps: int = 3
    batch: int = 128
    chunk: int = 8
    encode_batch: int = 64
    encode_batches: int = 2
    lora_dropout: float = 0.0
    two_process: bool = True
    out: str = "runs/gpu-check"
    device: str = "cuda"
    layers: int | None = None
    """Cut the decoder / vision tower (smoke-testing the full-size code path on a CPU); None: the real depth."""
    vision_depth: int | None = None

    @classmethod
    def for_mode(cls, tiny: bool, **overrides: Any) -> Settings:
        base = cls(tiny=True, steps=2, batch=8, chunk=4, encode_batch=8, encode_batches=1, device="cpu") \
            if tiny else cls(device="cuda" if torch.cuda.is_available() else "cpu")
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        return base


def attention_kernels() -> list[str]:
    """sdpa always; FlashAttention-2 when it imports and a GPU is present."""
    kernels = ["sdpa"]
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        kernels.append("flash_attention_2")
    return kernels


def build_model(s: Settings, attn: str = "sdpa", seed: int = 0) -> BToksModel:
    """Paper recipe: K = 4, GIC cache path, DoRA r16 α32 on the LLM projections, bf16."""
    if s.tiny:
        from btoks.backbones.tiny import tiny_backbone

        backbone = tiny_backbone("qwen2_vl", seed=seed, attn_implementation=attn)
        backbone.model.to(torch.bfloat16)
    else:
        backbone = real_shape_backbone(dtype=torch.bfloat16, device=s.device, attn_implementation=attn, seed=seed,
                                       layers=s.layers, vision_depth=s.vision_depth)
    model = BToksModel(backbone, BToksConfig(num_btoks=4, gen_weight=5.0, gic_impl="cache", max_length=4096,
                                             target_max_length=128, truncate_targets=True))
    torch.manual_seed(seed)
    model.apply_lora(r=16, alpha=32, dropout=s.lora_dropout, dora=True)
    return model.to(s.device).train()


def pairs_for(s: Settings, n: int, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """A mixed MMEB-like batch: half image queries (answer targets), half image candidates (query targets)."""
    shapes = TINY_PAIRS if s.tiny else PAPER_PAIRS
    tok = tiny_tokenizer()
    qa, pa = synthetic_pairs(shapes["image-query"], n - n // 2, tok, seed)
    qb, pb = synthetic_pairs(shapes["image-candidate"], n // 2, tok, seed + 1)
    return qa + qb, pa + pb


# ------------------------------------------------------------------------------------------------ measuring


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class PhaseMemory:
    """Peak allocated GPU memory per phase (``None`` on CPU, where the allocator keeps no peak)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peaks: dict[str, float | None] = dict.fromkeys(PHASES)
        self.current: str | None = None

    def enter(self, phase: str | None) -> None:
        if self.cuda and self.current is not None:
            peak = torch.cuda.max_memory_allocated() / 2**30
            self.peaks[self.current] = max(self.peaks[self.current] or 0.0, peak)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.current = phase


@contextlib.contextmanager
def phase_hooks(model: BToksModel, memory: PhaseMemory) -> Iterator[Callable[[torch.Tensor], None]]:
    """Mark pass 1 / pass 2 forwards (a forward without grad is GradCache's pass 1); yields the backward."""

    def pre(_module: Any, _args: Any) -> None:
        memory.enter(PHASES[1] if torch.is_grad_enabled() else PHASES[0])

    def backward(loss: torch.Tensor) -> None:
        memory.enter(PHASES[2])
        loss.backward()

    handle = model.register_forward_pre_hook(pre)
    try:
        yield backward
    finally:
        handle.remove()


def batch_tokens(batch: Any) -> int:
    total = 0
    for chunks in batch.chunks.values():
        for c in chunks:
            total += int(c.inputs.attention_mask.sum())
            if c.targets is not None:
                total += int(c.targets.attention_mask.sum())
    return total


def train_steps(model: BToksModel, s: Settings) -> dict[str, Any]:
    """``s.steps`` timed optimiser steps after one warm-up step, on fresh synthetic batches."""
    from btoks.train.step import compute_gradients, prepare_batch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)
    memory = PhaseMemory(s.device)
    times, tokens, losses = [], [], []
    for step in range(s.steps + 1):
        batch = prepare_batch(model, *pairs_for(s, s.batch, seed=step), chunk_size=s.chunk,
                              sort_by_length=True).to(s.device)
        _sync(s.device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with phase_hooks(model, memory) as backward:
            out = compute_gradients(model, batch, model.config.gen_weight, backward=backward)
        memory.enter(PHASES[3])
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        memory.enter(None)
        _sync(s.device)
        if step:  # step 0 is the warm-up (allocator, kernels)
            times.append(time.perf_counter() - t0)
            tokens.append(batch_tokens(batch))
            losses.append(out.loss)
    mean_t = sum(times) / len(times)
    return {"step_s": times, "mean_step_s": mean_t, "tokens_per_step": tokens,
            "tokens_per_s": sum(tokens) / sum(times), "losses": losses,
            "finite": all(torch.isfinite(torch.tensor(losses)).tolist()), "peak_gib": memory.peaks}


@torch.inference_mode()
def encode_throughput(model: BToksModel, s: Settings) -> dict[str, float]:
    """Samples/s of ``model(inputs)`` at batch ``s.encode_batch``, for image inputs and for text inputs."""
    model.eval()
    queries, positives = pairs_for(s, 2 * s.encode_batch, seed=100)
    images = [q for q in queries + positives if q.images][: s.encode_batch]
    texts = [q for q in queries + positives if not q.images][: s.encode_batch]
    out = {}
    for name, samples in (("image", images), ("text", texts)):
        inputs = model.prepare(samples).to(s.device)
        model(inputs)  # warm-up
        _sync(s.device)
        t0 = time.perf_counter()
        for _ in range(s.encode_batches):
            model(inputs)
        _sync(s.device)
        out[f"{name}_samples_per_s"] = len(samples) * s.encode_batches / (time.perf_counter() - t0)
        out[f"{name}_tokens_per_sample"] = float(inputs.attention_mask.sum(1).float().mean())
    model.train()
    return out


def gic_agreement(model: BToksModel, s: Settings) -> dict[str, Any]:
    """The KV-cache GIC path vs the explicit Condensation Mask on one chunk, in the model's dtype."""
    from btoks.train.step import prepare_batch

    batch = prepare_batch(model, *pairs_for(s, s.chunk, seed=200), chunk_size=s.chunk).to(s.device)
    chunk = batch.chunks["query"][0]
    params = [p for p in model.parameters() if p.requires_grad]
    got = {}
    for impl in ("cache", "mask"):
        model.config.gic_impl = impl
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        out = model(chunk.inputs, chunk.targets)
        (out.embeddings.sum() + out.gen_loss).backward()
        grad = torch.cat([p.grad.float().flatten() for p in params if p.grad is not None])
        got[impl] = (out.embeddings.detach().float(), out.gen_loss.item(), grad)
    model.config.gic_impl = "cache"
    model.zero_grad(set_to_none=True)
    (e1, l1, g1), (e2, l2, g2) = got["cache"], got["mask"]
    cos = torch.nn.functional.cosine_similarity
    result = {"loss_cache": l1, "loss_mask": l2, "loss_rel_diff": abs(l1 - l2) / max(abs(l2), 1e-12),
              "embedding_min_cosine": float(cos(e1, e2).min()),
              "grad_cosine": float(cos(g1, g2, dim=0))}
    result["agree"] = result["loss_rel_diff"] < 0.02 and result["embedding_min_cosine"] > 0.99 \
        and result["grad_cosine"] > 0.98
    return result


# ------------------------------------------------------------------------------------------------ two processes


def _flat_grads(model: BToksModel) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).float().flatten()
                      for p in model.parameters() if p.requires_grad])


def _rank_worker(rank: int, world: int, s: Settings, port: int, result: str) -> None:
    """One rank of the 2-process step: half the global batch, gradients averaged like the trainer does."""
    import torch.distributed as dist

    from btoks.train.step import compute_gradients, prepare_batch

    backend = "nccl" if s.device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        device = f"cuda:{rank}" if backend == "nccl" else "cpu"
        if backend == "nccl":
            torch.cuda.set_device(rank)
        model = build_model(Settings(**{**asdict(s), "device": device}))
        queries, positives = pairs_for(s, s.batch, seed=300)
        per = s.batch // world
        part = slice(rank * per, (rank + 1) * per)
        batch = prepare_batch(model, queries[part], positives[part], chunk_size=s.chunk).to(device)
        compute_gradients(model, batch, model.config.gen_weight)
        flat = _flat_grads(model)
        dist.all_reduce(flat)
        flat /= world
        if rank == 0:
            torch.save(flat.cpu(), result)
    finally:
        dist.destroy_process_group()


def two_process_step(s: Settings) -> dict[str, Any] | None:
    """Gradients of a 2-process step vs one process on the same global batch (None: fewer than 2 GPUs)."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    from btoks.train.step import compute_gradients, prepare_batch

    if s.device.startswith("cuda") and torch.cuda.device_count() < 2:
        return None
    model = build_model(s)
    batch = prepare_batch(model, *pairs_for(s, s.batch, seed=300), chunk_size=s.chunk).to(s.device)
    compute_gradients(model, batch, model.config.gen_weight)
    single = _flat_grads(model).cpu()
    del model, batch
    if s.device.startswith("cuda"):
        torch.cuda.empty_cache()  # rank 0 shares this GPU
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "grads.pt")
        mp.spawn(_rank_worker, args=(2, s, port, path), nprocs=2, join=True)
        double = torch.load(path, weights_only=True)
    cos = float(torch.nn.functional.cosine_similarity(single, double, dim=0))
    rel = float((single - double).norm() / single.norm().clamp(min=1e-12))
    return {"grad_cosine": cos, "grad_rel_diff": rel, "equal": cos > 0.99 and rel < 0.1}


# ------------------------------------------------------------------------------------------------ report


def environment(s: Settings) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "device": s.device,
                           "flash_attn": importlib.util.find_spec("flash_attn") is not None}
    if s.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpus"] = torch.cuda.device_count()
        env["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return env


def _num(v: Any, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _error(part: Any) -> str | None:
    return part.get("error") if isinstance(part, dict) else None


def markdown(report: dict[str, Any]) -> str:
    s, env = report["settings"], report["environment"]
    cut = f", cut to {s['layers']} layers / {s['vision_depth']} vision blocks" \
        if s["layers"] or s["vision_depth"] else ""
    model = "tiny Qwen2-VL (CPU, --tiny)" if s["tiny"] else f"Qwen2-VL-2B shape, random weights{cut}"
    lines = [f"# btoks gpu-check ({model})", "",
             f"- device: {env.get('gpu', env['device'])}; torch {env['torch']}, transformers "
             f"{env['transformers']}, flash_attn {'yes' if env['flash_attn'] else 'no'}",
             f"- recipe: K=4, GIC cache path, DoRA r16 (dropout {s['lora_dropout']}), bf16, batch {s['batch']} "
             f"in GradCache chunks of {s['chunk']} (sorted by length), {s['steps']} timed steps after 1 warm-up",
             "", "| attention | step (s) | tokens/s | " + " | ".join(f"peak {p} (GiB)" for p in PHASES) + " |",
             "|---|---|---|" + "---|" * len(PHASES)]
    for attn, r in report["train"].items():
        if _error(r):
            lines.append(f"| {attn} | **error**: {_error(r)} |" + " |" * (len(PHASES) + 1))
            continue
        peaks = " | ".join(_num(r["peak_gib"][p]) for p in PHASES)
        lines.append(f"| {attn} | {r['mean_step_s']:.2f} | {r['tokens_per_s']:.0f} | {peaks} |")
    e = report["encode"]
    lines += ["", f"Encode: **error** {_error(e)}" if _error(e) else
              f"Encode at batch {s['encode_batch']}: images {e['image_samples_per_s']:.1f} samples/s "
              f"({e['image_tokens_per_sample']:.0f} tokens each), texts {e['text_samples_per_s']:.1f} samples/s "
              f"({e['text_tokens_per_sample']:.0f} tokens each).", ""]
    g = report["gic_agreement"]
    lines.append(f"GIC cache vs mask: **error** {_error(g)}" if _error(g) else
                 f"GIC cache vs mask (bf16): loss {g['loss_cache']:.4f} vs {g['loss_mask']:.4f} "
                 f"(rel. diff {g['loss_rel_diff']:.2e}), embedding min cosine {g['embedding_min_cosine']:.4f}, "
                 f"gradient cosine {g['grad_cosine']:.4f}: {'agree' if g['agree'] else '**DISAGREE**'}.")
    t = report["two_process"]
    if t is None:
        two = "not run (--no-two-process)." if not s["two_process"] else "skipped (fewer than 2 GPUs)."
    elif _error(t):
        two = f"**error** {_error(t)}"
    else:
        two = (f"gradient cosine {t['grad_cosine']:.5f}, relative difference {t['grad_rel_diff']:.2e}: "
               f"{'equal' if t['equal'] else '**DIFFERENT**'}.")
    lines.append("2-process step vs 1 process: " + two)
    lines.append(f"\nOverall: {'PASS' if report['ok'] else '**FAIL**'} ({report['wall_s']:.0f} s).")
    return "\n".join(lines) + "\n"


def _train_fresh(s: Settings, attn: str) -> dict[str, Any]:
    return train_steps(build_model(s, attn), s)


def _attempt(fn: Callable[[], Any], device: str) -> Any:
    """Run one part of the check; a failure is recorded (one line) so the other parts and the report still
    come out of a scarce GPU session."""
    try:
        return fn()
    except Exception as e:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}


def run_check(s: Settings, progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run every part of the check and write ``report.json`` / ``report.md`` under ``s.out``."""
    started = time.perf_counter()
    report: dict[str, Any] = {"settings": asdict(s), "environment": environment(s), "train": {}}
    for attn in attention_kernels():
        progress(f"training steps ({attn})")
        report["train"][attn] = _attempt(partial(_train_fresh, s, attn), s.device)
        if s.device.startswith("cuda"):
            torch.cuda.empty_cache()
    model = build_model(s, "sdpa")
    progress("encode throughput")
    report["encode"] = _attempt(partial(encode_throughput, model, s), s.device)
    progress("GIC cache vs mask")
    report["gic_agreement"] = _attempt(partial(gic_agreement, model, s), s.device)
    del model
    if s.device.startswith("cuda"):
        torch.cuda.empty_cache()
    progress("2-process step")
    report["two_process"] = _attempt(lambda: two_process_step(s), s.device) if s.two_process else None
    report["wall_s"] = time.perf_counter() - started
    train_ok = all(not _error(r) and r["finite"] for r in report["train"].values())
    gic_ok = not _error(report["gic_agreement"]) and report["gic_agreement"]["agree"]
    two = report["two_process"]
    report["ok"] = train_ok and gic_ok and not _error(report["encode"]) and (
        two is None or (not _error(two) and two["equal"]))
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m btoks.gpucheck", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny model on CPU (seconds): tests the check itself")
    p.add_argument("--out", default=None, help="report folder (default runs/gpu-check)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 3; tiny 2)")
    p.add_argument("--batch", type=int, default=None, help="pairs per step (default 128; tiny 8)")
    p.add_argument("--chunk", type=int, default=None, help="GradCache chunk (default 8; tiny 4)")
    p.add_argument("--lora-dropout", type=float, default=None,
                   help="DoRA dropout (default 0; the paper's 0.05 re-runs every base layer, docs/benchmarks.md)")
    p.add_argument("--no-two-process", action="store_true", help="skip the 2-process gradient check")
    p.add_argument("--device", default=None, help="default cuda (cpu with --tiny); cpu runs the full-size path")
    p.add_argument("--encode-batch", type=int, default=None, help="encode batch (default 64; tiny 8)")
    p.add_argument("--layers", type=int, default=None, help="cut the decoder to N layers (CPU smoke test)")
    p.add_argument("--vision-depth", type=int, default=None, help="cut the vision tower to N blocks")
    args = p.parse_args(argv)
    s = Settings.for_mode(args.tiny, out=args.out, steps=args.steps, batch=args.batch, chunk=args.chunk,
                          lora_dropout=args.lora_dropout, two_process=False if args.no_two_process else None,
                          device=args.device, encode_batch=args.encode_batch, layers=args.layers,
                          vision_depth=args.vision_depth)
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: no CUDA device; use --tiny (or --device cpu) for a CPU run", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report = run_check(s, progress=lambda m: print(f"[gpu-check] {m}", file=sys.stderr, flush=True))
    print(markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
