"""One optimisation step's loss and gradients: InfoNCE + λ·GIC, optionally with GradCache.

GradCache (Gao et al. 2021) lets a large contrastive batch fit in memory: pass 1 embeds every chunk without a
graph, the contrastive loss is differentiated w.r.t. the embeddings only, and pass 2 re-runs each chunk with a
graph and back-propagates ``<embedding, cached grad>`` plus that chunk's share of the generative loss. The RNG
state of each chunk is replayed so dropout masks match, which makes chunked gradients equal unchunked ones.

Across ranks the contrastive loss is the global-batch loss (``losses.info_nce`` gathers queries and
candidates) times the world size, because the distributed engine (DDP) averages gradients over ranks; the
generative loss is each rank's own and is averaged like any data-parallel loss. R ranks thus give the gradient
one process computes on the concatenated batch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import torch
from torch import nn

from btoks.backbones import ModelInputs
from btoks.data.sample import Sample
from btoks.losses import count_target_tokens, info_nce, world_size
from btoks.model import BToksModel, EncodeOutput, TargetBatch

SIDES = ("query", "positive", "negative")


@dataclass
class Chunk:
    inputs: ModelInputs
    targets: TargetBatch | None


@dataclass
class PreparedBatch:
    """Tokenised chunks per side (query / positive / negative) and the batch-level GIC normalisers.

    ``order`` is the row permutation applied before chunking (rows sorted by query length)."""

    chunks: dict[str, list[Chunk]]
    batch_size: int
    target_tokens: int
    target_rows: int
    target_sides: int
    order: list[int]

    def to(self, device: torch.device) -> PreparedBatch:
        moved = {s: [Chunk(c.inputs.to(device), c.targets.to(device) if c.targets else None) for c in cs]
                 for s, cs in self.chunks.items()}
        return PreparedBatch(moved, self.batch_size, self.target_tokens, self.target_rows, self.target_sides,
                             self.order)


def _gic_targets(model: BToksModel, samples: list[Sample], opposite: list[Sample]) -> list[str | Sample | None]:
    """Per row: nothing (``Sample.target`` is None: this dataset side generates nothing), the other side's
    full input (``gic_target="input"``, the authors' rule) or the target text."""
    if model.config.gic_target == "input":
        return [o if s.target is not None else None for s, o in zip(samples, opposite, strict=True)]
    return [s.target for s in samples]


def prepare_batch(model: BToksModel, queries: list[Sample], positives: list[Sample],
                  negatives: list[Sample] | None = None, chunk_size: int | None = None,
                  with_targets: bool = True, sort_by_length: bool = False) -> PreparedBatch:
    """Tokenise a batch of pairs into chunks. Which rows carry GIC targets comes from ``Sample.target``, which
    the readers set per dataset ``ntp_side`` (query side: generate the positive; positive side: the query).

    ``sort_by_length`` orders the pairs by query token count (stable) before chunking, as the authors'
    GradCache does; it changes which rows share a chunk, hence the per-chunk GIC normalisation."""
    n = len(queries)
    size = chunk_size or n
    query_rows = [model.tokenize(q) for q in queries]
    order = list(range(n))
    if sort_by_length and size < n:
        order.sort(key=lambda i: (len(query_rows[i].ids), i))
    queries, positives = [queries[i] for i in order], [positives[i] for i in order]
    query_rows = [query_rows[i] for i in order]
    sides = {"query": queries, "positive": positives}
    if negatives:
        sides["negative"] = [negatives[i] for i in order]
    opposite = {"query": positives, "positive": queries}
    chunks: dict[str, list[Chunk]] = {}
    tokens = rows = 0
    target_sides = set()
    for side, samples in sides.items():
        chunks[side] = []
        want = with_targets and side != "negative" and model.config.num_btoks > 0
        targets = _gic_targets(model, samples, opposite[side]) if want else [None] * len(samples)
        for start in range(0, n, size):
            part = slice(start, start + size)
            tb = None
            if any(t is not None for t in targets[part]):
                tb = model.prepare_targets(targets[part], [s.id for s in samples[part]])
                if tb is not None:
                    tokens += count_target_tokens(tb.labels)
                    rows += len(tb.rows)
                    target_sides.add(side)
            inputs = model.collate(query_rows[part]) if side == "query" else model.prepare(samples[part])
            chunks[side].append(Chunk(inputs, tb))
    return PreparedBatch(chunks, n, tokens, rows, len(target_sides), order)


class RandState:
    """Snapshot of the torch RNGs, to replay a chunk's dropout in GradCache's second pass."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


class ChunkRunner(nn.Module):
    """Runs the model over a list of chunks in one ``forward``: the module a distributed engine wraps (one
    forward, then one backward, per synchronisation), so every chunk's graph is visible to DDP."""

    def __init__(self, model: BToksModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, chunks: list[Chunk], with_targets: bool = True) -> list[EncodeOutput]:
        return [self.model(c.inputs, c.targets if with_targets else None) for c in chunks]


Forward = Callable[[list[Chunk], bool], list[EncodeOutput]]


@dataclass
class StepLosses:
    loss: float
    contrastive: float
    generative: float


def _gen_scale(model: BToksModel, batch: PreparedBatch) -> Callable[[EncodeOutput, int], torch.Tensor | None]:
    """A chunk's generative term per ``config.gen_loss_norm`` / ``gen_sides`` (docs/parity.md rows 3–4)."""
    cfg = model.config
    sides = max(batch.target_sides, 1) if cfg.gen_sides == "mean" else 1
    if cfg.gen_loss_norm == "chunk":
        def term(out: EncodeOutput, rows: int) -> torch.Tensor | None:
            # out.gen_loss is the chunk's token mean × (target rows ÷ chunk rows)
            return None if out.gen_loss is None else out.gen_loss * (rows / (batch.batch_size * sides))
    else:
        scale = batch.target_rows / (batch.batch_size * sides) / max(batch.target_tokens, 1)

        def term(out: EncodeOutput, rows: int) -> torch.Tensor | None:
            return None if out.gen_loss_sum is None else out.gen_loss_sum * scale
    return term


def compute_gradients(model: BToksModel, batch: PreparedBatch, gen_weight: float,
                      backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
                      temperature: float | None = None, symmetric: bool | None = None,
                      reuse_media: bool = True, forward: Forward | None = None,
                      no_sync: Callable[[], AbstractContextManager[None]] | None = None) -> StepLosses:
    """Accumulate ∇(L_con + λ·L_gen) into ``.grad``; uses GradCache when any side has several chunks.

    ``forward`` runs chunks with a graph (default: ``model`` itself; the trainer passes its DDP-wrapped
    ``ChunkRunner``); ``no_sync`` suspends gradient synchronisation for every GradCache backward but the last.
    Returned losses are the global contrastive loss and this rank's generative loss.
    With ``reuse_media`` GradCache's pass 1 keeps a frozen vision tower's outputs for pass 2 instead of running
    the tower twice (``Backbone.precompute_media``; same gradients, ~30 % fewer FLOPs at Qwen2-VL-2B's shape).
    """
    cfg = model.config
    temperature = temperature or cfg.temperature
    symmetric = cfg.symmetric_loss if symmetric is None else symmetric
    use_gen = gen_weight > 0 and batch.target_tokens > 0
    run = forward or ChunkRunner(model)
    world = world_size()
    gen_term = _gen_scale(model, batch)

    def contrastive(emb: dict[str, torch.Tensor]) -> torch.Tensor:
        return info_nce(emb["query"], emb["positive"], temperature, emb.get("negative"), symmetric)

    def gen_of(out: EncodeOutput, rows: int) -> torch.Tensor | None:
        return gen_term(out, rows) if use_gen else None

    if all(len(cs) == 1 for cs in batch.chunks.values()):
        outs = dict(zip(batch.chunks, run([cs[0] for cs in batch.chunks.values()], use_gen), strict=True))
        con = contrastive({s: o.embeddings for s, o in outs.items()})
        gens = [g for s, o in outs.items() if (g := gen_of(o, len(batch.chunks[s][0].inputs))) is not None]
        gen = torch.stack(gens).sum() if gens else con.new_zeros(())
        backward(con * world + gen_weight * gen if use_gen else con * world)
        con_v, gen_v = con.item(), gen.item()
        return StepLosses(con_v + gen_weight * gen_v, con_v, gen_v)

    states: dict[str, list[RandState]] = {}
    pass2: dict[str, list[ModelInputs]] = {side: [] for side in batch.chunks}
    cached: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for side, cs in batch.chunks.items():
            states[side], parts = [], []
            for c in cs:
                inputs = c.inputs
                # pass 2 sees the same features; the caller's batch is left as it was. An explicit [X|B|T]
                # pass with image targets interleaves raw pixels per row, so it keeps them.
                if reuse_media and not (model.explicit_gic and c.targets is not None and c.targets.media):
                    inputs = replace(inputs, media=model.backbone.precompute_media(inputs.media))
                pass2[side].append(inputs)
                states[side].append(RandState())
                parts.append(model(inputs).embeddings)
            cached[side] = torch.cat(parts).requires_grad_()
    con = contrastive(cached)
    grads = dict(zip(cached, torch.autograd.grad(con * world, list(cached.values())), strict=True))
    gen_total = 0.0
    work = [(side, Chunk(inputs, c.targets), state) for side, cs in batch.chunks.items()
            for c, inputs, state in zip(cs, pass2[side], states[side], strict=True)]
    offsets = dict.fromkeys(batch.chunks, 0)
    for i, (side, c, state) in enumerate(work):
        state.restore()
        with (no_sync() if no_sync is not None and i < len(work) - 1 else nullcontext()):
            out = run([c], use_gen)[0]
            n = out.embeddings.shape[0]
            surrogate = (out.embeddings * grads[side][offsets[side]:offsets[side] + n]).sum()
            offsets[side] += n
            gen = gen_of(out, n)
            if gen is not None:
                gen_total += gen.item()
                surrogate = surrogate + gen_weight * gen
            backward(surrogate)
    return StepLosses(con.item() + gen_weight * gen_total, con.item(), gen_total)

