"""Multi-process evaluation: each process embeds a contiguous shard of every side, all gather the embeddings.

Started by ``torchrun --nproc-per-node N -m btoks.cli eval ...`` or ``accelerate launch --multi_gpu -m btoks.cli ...``
(both set ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR``), :func:`from_env` joins the process group (NCCL on GPUs,
gloo on CPUs). Shards are contiguous and gathered in rank order, so the full embedding matrix, and therefore
every score, is the one a single process computes; process 0 alone writes results, caches and summaries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (``world == 1``: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        """The contiguous slice of ``range(n)`` this process handles (sizes differ by at most one)."""
        per, extra = divmod(n, self.world)
        start = self.rank * per + min(self.rank, extra)
        return range(start, start + per + (self.rank < extra))

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order (``[obj]`` when alone)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Process 0's ``obj`` on every process."""
        if self.world == 1:
            return obj
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()


def from_env() -> Dist:
    """Join the process group the launcher described in the environment (a no-op without ``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as td

    if not td.is_initialized():
        td.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", td.get_rank())))
