"""Two gloo processes, DDP through accelerate: a step on 2 ranks gives the gradients of one process on the
concatenated batch (contrastive + GIC, GradCache chunks under ``no_sync``, LoRA + DoRA + BTok rows,
a vision tower used on one rank only)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from btoks import BToksConfig, BToksModel, Sample
from btoks.backbones.tiny import tiny_backbone
from btoks.losses import info_nce
from btoks.train.step import ChunkRunner, compute_gradients, prepare_batch

WORLD, PER_RANK, CHUNK, GEN = 2, 4, 2, 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(lora: bool) -> BToksModel:
    torch.manual_seed(0)
    model = BToksModel(tiny_backbone("qwen2_vl"), BToksConfig(num_btoks=2, temperature=0.5))
    if lora:
        model.apply_lora(r=4, alpha=8, dropout=0.0, dora=True, target_modules=["q_proj", "v_proj", "down_proj"])
    return model.train()


def _pairs(image) -> tuple[list[Sample], list[Sample]]:
    words = ["red circle", "blue square", "green triangle left", "yellow star", "a cat on a sofa",
             "the quick brown fox", "a man rides a bicycle", "digit seven"]
    queries = [Sample(text=f"what is {w}?", target="yes", id=f"q{i}") for i, w in enumerate(words)]
    queries[1] = Sample(text="<image> what shape?", images=[image], target="yes", id="q1")  # rank 0 only
    positives = [Sample(text=w, target="no" if i % 2 else None, id=f"p{i}") for i, w in enumerate(words)]
    return queries, positives


def _grads(model: BToksModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, image, embs, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD), ACCELERATE_USE_CPU="true",
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    acc = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    assert acc.num_processes == WORLD
    q, p = embs
    rows = slice(rank * 4, (rank + 1) * 4)
    lq, lp = q[rows].clone().requires_grad_(), p[rows].clone().requires_grad_()
    loss = info_nce(lq, lp, temperature=0.5)
    (loss * WORLD).backward()  # what DDP-averaged training back-propagates
    out["nce", rank] = (loss.item(), lq.grad.clone(), lp.grad.clone())
    for lora in (True, False):
        model = _model(lora)
        runner = acc.prepare(ChunkRunner(model))
        assert isinstance(runner, torch.nn.parallel.DistributedDataParallel)
        qs, ps = _pairs(image)
        part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        batch = prepare_batch(model, qs[part], ps[part], chunk_size=CHUNK)
        losses = compute_gradients(model, batch, GEN, backward=acc.backward, forward=runner,
                                   no_sync=lambda: acc.no_sync(runner))  # noqa: B023 (called within the loop)
        out[lora, rank] = (losses.contrastive, losses.generative, _grads(model))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_concatenated_batch(rgb):
    """A step on 2 ranks (each half of the batch) equals one process on the whole batch, with LoRA + DoRA +
    BTok rows and with full fine-tuning. The latter also covers parameters a rank uses only in a
    ``no_sync`` chunk (the vision tower: rank 0's first query chunk has the image; its last chunk and all of
    rank 1 are text). InfoNCE alone: each rank's loss is the global loss, and its gradient (×W, DDP then
    averages) is its share of the global gradient; gathering only candidates gave 0.707× the candidate
    gradient's norm at 2 ranks."""
    torch.manual_seed(0)
    eq = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    ep = torch.nn.functional.normalize(eq + 2.0 * torch.randn(8, 16), dim=-1)
    image = rgb(28, 28)
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), image, (eq, ep), out), nprocs=WORLD, join=True)

    gq, gp = eq.clone().requires_grad_(), ep.clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(gq @ gp.T / 0.5, torch.arange(8))
    expected.backward()
    for rank in range(WORLD):
        rows = slice(rank * 4, (rank + 1) * 4)
        loss, grad_q, grad_p = out["nce", rank]
        assert abs(loss - expected.item()) < 1e-6
        assert torch.allclose(grad_q / WORLD, gq.grad[rows], atol=1e-6)
        assert torch.allclose(grad_p / WORLD, gp.grad[rows], atol=1e-6)

    qs, ps = _pairs(image)
    for lora in (True, False):
        model = _model(lora)
        single = compute_gradients(model, prepare_batch(model, qs, ps, chunk_size=CHUNK), GEN)
        expect = _grads(model)
        assert any(("lora" if lora else "visual") in n for n in expect)
        for rank in range(WORLD):
            con, _, grads = out[lora, rank]
            assert abs(con - single.contrastive) < 1e-5  # every rank computes the global contrastive loss
            assert grads.keys() == expect.keys()
            for name, g in expect.items():
                err = (grads[name] - g).norm() / g.norm().clamp(min=1e-12)
                assert err < 1e-5, (lora, rank, name, float(err))
        assert abs((out[lora, 0][1] + out[lora, 1][1]) / WORLD - single.generative) < 1e-5  # GIC: rank mean
