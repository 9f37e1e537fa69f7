"""A readable training loop on accelerate: InfoNCE + λ·GIC, GradCache, atomic checkpoints, exact resume.

Data parallelism: every rank draws its slice of one global batch from the same source dataset and computes the
global contrastive loss over queries and candidates gathered from all ranks (``losses.info_nce``). Gradients are
synchronised by DDP (through accelerate) around a ``ChunkRunner``: each GradCache chunk is one forward and one
backward, all but the last under ``no_sync``; ``find_unused_parameters`` covers parameters a step does not use
(the vision tower on text-only chunks). A step on R ranks gives the gradient of the concatenated batch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from btoks.data.media import MediaConfig
from btoks.data.readers import ConcatTrainSets, TrainPair, read_train
from btoks.model import BToksModel
from btoks.train import rundir
from btoks.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from btoks.train.config import TrainConfig
from btoks.train.step import ChunkRunner, compute_gradients, prepare_batch

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """``auto``: bfloat16 where the hardware multiplies it natively (a bf16-capable GPU, or a CPU with AVX512-BF16
    or AMX, where bf16 matmuls ran 11x faster than fp32 here), else float32 (elsewhere bf16 on a CPU is
    emulated and slower than fp32)."""
    if name != "auto":
        return DTYPES[name]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if native else torch.float32


def load_train_sets(cfg: TrainConfig) -> list[Sequence[TrainPair]]:
    if cfg.examples:
        from btoks.data.examples import load_examples

        return list(load_examples(cfg.examples))
    sets = []
    for src in cfg.data:
        path = Path(cfg.data_root or ".", src.path) if src.path else Path(cfg.data_root or ".", src.name)
        sets.append(read_train(path, dataset=src.name, root=src.image_root or cfg.data_root,
                               media=MediaConfig(num_frames=cfg.video_frames, decode_pixels=cfg.image_max_pixels),
                               ntp_side=src.ntp_side, prompt_style=cfg.prompt_style))
    return sets


class Trainer:
    """Builds the model, optimiser and data from a ``TrainConfig`` and runs ``train()``."""

    def __init__(self, cfg: TrainConfig, model: BToksModel | None = None,
                 train_sets: list[Sequence[TrainPair]] | None = None) -> None:
        self.cfg = cfg
        self.accelerator = Accelerator(kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)])
        set_seed(cfg.seed)
        if model is None:
            model = BToksModel.from_backbone(cfg.model, cfg.btoks, dtype=resolve_dtype(cfg.dtype),
                                             attn_implementation=cfg.attn_implementation)
            if cfg.lora:
                model.apply_lora(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.dora,
                                 target_modules=cfg.lora_target_modules)
        model.backbone.set_pixel_budget(max_pixels=cfg.image_max_pixels)
        if cfg.gradient_checkpointing:
            model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not cfg.lora or model.peft_model is None:
            for p in model.parameters():
                p.requires_grad_(True)
        self.model = model.to(self.accelerator.device)
        self.runner = self.accelerator.prepare(ChunkRunner(self.model))  # DDP when distributed
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, cfg.warmup_steps, cfg.max_steps)
        self.data = ConcatTrainSets(train_sets if train_sets is not None else load_train_sets(cfg))
        world = self.accelerator.num_processes
        weights = {s.name: s.weight for s in cfg.data} if cfg.data and not cfg.examples else None
        self.sampler = self.data.sampler(cfg.batch_size * world, weights=weights, seed=cfg.seed,
                                         num_batches=cfg.max_steps)
        self.step = 0
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"

    # ---- state -----------------------------------------------------------------------------------------------
    def save(self) -> None:
        if self.accelerator.is_main_process:
            save_checkpoint(self.ckpt_dir, self.step, self.params, self.optimizer, self.scheduler,
                            {"sampler": self.sampler.state_dict(step=self.step), "config": self.cfg.to_dict()},
                            keep=self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def maybe_resume(self) -> bool:
        path = latest_checkpoint(self.ckpt_dir) if self.cfg.resume else None
        if path is None:
            return False
        meta = load_checkpoint(path, self.params, self.optimizer, self.scheduler)
        self.sampler.load_state_dict(meta["sampler"])
        self.step = int(meta["step"])
        self.accelerator.print(f"resumed from {path} at step {self.step}")
        return True

    # ---- loop ------------------------------------------------------------------------------------------------
    def train(self, on_step: Callable[[int, dict[str, float]], None] | None = None,
              progress: bool = True) -> BToksModel:
        """Run to ``max_steps`` (resuming from the latest checkpoint) and save the final model; ``on_step`` sees
        every step's record (``progress=False`` leaves the progress display to it)."""
        cfg, acc = self.cfg, self.accelerator
        if acc.is_main_process:  # refuses a different configuration's run; cleans a killed run's leftovers
            rundir.prepare(self.out, cfg.to_dict(), resume=cfg.resume)
        acc.wait_for_everyone()
        self.maybe_resume()
        if acc.is_main_process:
            rundir.trim_log(self.out, self.step)
        self.model.train()
        rank, per_rank = acc.process_index, cfg.batch_size
        batches = iter(self.sampler)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train",
                   disable=not (progress and acc.is_main_process))
        log_file = self.out / rundir.LOG_FILE
        started = time.time()
        while self.step < cfg.max_steps:
            indices = next(batches)[rank * per_rank:(rank + 1) * per_rank]
            pairs = [self.data[i] for i in indices]
            negatives = [p.negative for p in pairs] if cfg.hard_negatives else None
            if negatives and any(n is None for n in negatives):
                raise ValueError(f"hard_negatives is on but dataset {pairs[0].dataset!r} has rows without one")
            batch = prepare_batch(self.model, [p.query for p in pairs], [p.positive for p in pairs], negatives,
                                  cfg.grad_cache_chunk, sort_by_length=cfg.sort_by_length).to(acc.device)
            gen_weight = self.model.config.gen_weight_at(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            losses = compute_gradients(self.model, batch, gen_weight, backward=acc.backward, forward=self.runner,
                                       no_sync=lambda: acc.no_sync(self.runner))
            grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            record = {"step": self.step, "loss": losses.loss, "contrastive": losses.contrastive,
                      "generative": losses.generative, "gen_weight": gen_weight, "grad_norm": float(grad_norm),
                      "lr": self.scheduler.get_last_lr()[0], "dataset": pairs[0].dataset,
                      "candidates": batch.batch_size * acc.num_processes}
            if not math.isfinite(losses.loss):
                raise FloatingPointError(f"non-finite loss at step {self.step}: {record}")
            bar.update(1)
            bar.set_postfix(con=f"{losses.contrastive:.3f}", gen=f"{losses.generative:.3f}")
            if acc.is_main_process and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                with log_file.open("a") as f:
                    f.write(json.dumps({**record, "elapsed_s": round(time.time() - started, 2)}) + "\n")
            if on_step is not None:
                on_step(self.step, record)
            if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                self.save()
        bar.close()
        if acc.is_main_process:
            self.model.save_pretrained(self.out / "model")
        acc.wait_for_everyone()
        return self.model


def train(cfg: TrainConfig, **kwargs: Any) -> BToksModel:
    return Trainer(cfg, **kwargs).train()
