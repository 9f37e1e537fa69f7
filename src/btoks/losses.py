"""InfoNCE with cross-rank negatives, and the generative (GIC) loss."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather ``x`` from every rank, keeping the local slice as the autograd-tracked tensor.

    ``all_gather`` returns tensors without gradient history; putting the local tensor back in its slot lets
    gradients flow to this rank's encoder while other ranks' embeddings act as constants. Ranks may hold
    different numbers of rows. Returns the gathered tensor and this rank's offset into it.
    """
    if world_size() == 1:
        return x, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    max_n = int(max(s.item() for s in sizes))
    padded = F.pad(x.detach(), (0, 0, 0, max_n - x.shape[0]))
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    rank = dist.get_rank()
    parts = [p[: int(n.item())] for p, n in zip(parts, sizes, strict=True)]
    parts[rank] = x
    offset = sum(int(n.item()) for n in sizes[:rank])
    return torch.cat(parts), offset


def info_nce(
    query: torch.Tensor,
    positive: torch.Tensor,
    temperature: float = 0.02,
    negatives: torch.Tensor | None = None,
    symmetric: bool = False,
    gather: bool = True,
) -> torch.Tensor:
    """InfoNCE query → positive over the global batch: with ``gather``, queries, positives and hard negatives
    of every rank are gathered (local slices keep their gradient) and every rank computes the same global loss.

    Each rank's autograd then yields the exact gradient of the global loss w.r.t. its own embeddings; the
    global gradient is the *sum* over ranks, so a caller whose gradients are averaged across ranks (DDP) must
    back-propagate ``world_size() ×`` this loss (as the authors' ``scale_loss`` does). Gathering only the
    candidates would drop the other ranks' queries' pull on this rank's candidates (0.707× the gradient
    norm at 2 ranks). ``negatives`` (N, d) are extra candidates appended to the pool; ``symmetric`` adds the
    positive → query direction. Embeddings are expected L2-normalised (cosine similarity / temperature).
    """
    if query.shape != positive.shape:
        raise ValueError(f"query and positive embeddings differ in shape: {tuple(query.shape)} vs "
                         f"{tuple(positive.shape)}")
    if gather:
        all_q = gather_with_grad(query)[0]
        all_p = gather_with_grad(positive)[0]
        all_n = gather_with_grad(negatives)[0] if negatives is not None else None
    else:
        all_q, all_p, all_n = query, positive, negatives
    candidates = all_p if all_n is None else torch.cat([all_p, all_n])
    labels = torch.arange(all_q.shape[0], device=query.device)
    loss = F.cross_entropy(all_q @ candidates.T / temperature, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(all_p @ all_q.T / temperature, labels)) / 2
    return loss


def generative_loss(
    logits: torch.Tensor, labels: torch.Tensor, batch_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy over labelled target tokens as ``(mean, sum)`` from one CE evaluation.

    ``logits`` (n, T, V) are the outputs at target positions, ``labels`` (n, T) the target ids with -100 where
    no loss applies (wrapping prefix, padding). ``batch_size`` is the full batch the n targets came from: the
    mean is scaled by (samples with a target ÷ batch) as design §1 states. The unscaled token sum lets
    GradCache chunks be normalised by batch totals. The CE over the vocabulary is the costly part of GIC's
    extra work, so it is computed once and the mean derived from the sum.
    """
    n = labels.shape[0]
    if n == 0:
        zero = logits.sum() * 0.0
        return zero, zero
    shift_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), shift_labels,
                            ignore_index=-100, reduction="sum")
    mean = total / (shift_labels != -100).sum()  # 0/0 = NaN with no labelled token, as F.cross_entropy's mean
    return mean * (n / (batch_size or n)), total


def count_target_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry a generative loss (labels shifted by one, as in ``generative_loss``)."""
    return int((labels[:, 1:] != -100).sum())
