"""Weighted per-dataset batch sampling with exact, cheap resume (the trainer checkpoints it)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


class MixtureSampler:
    """Batches drawn from one source dataset at a time, the dataset picked with per-dataset weights.

    Yields lists of global indices into the concatenation of the datasets (the order of ``sizes``), so it
    plugs into ``DataLoader(batch_sampler=...)`` over :class:`ConcatTrainSets`. Everything is a pure
    function of ``(seed, step)``: the dataset of step ``t`` comes from a seeded block of draws and each
    dataset walks its own seeded permutation per pass (remainders dropped, reshuffled next pass; a dataset
    smaller than the batch gives its whole permutation). Resuming therefore needs only the step count.

    With a prefetching DataLoader the sampler runs ahead of training; checkpoint with
    ``state_dict(step=batches_consumed)``.
    """

    BLOCK = 4096

    def __init__(self, sizes: Mapping[str, int], batch_size: int, *, weights: Mapping[str, float] | None = None,
                 seed: int = 0, num_batches: int | None = None) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.names = list(sizes)
        self.sizes = np.array([int(sizes[n]) for n in self.names], dtype=np.int64)
        self.batch_size, self.seed = int(batch_size), int(seed)
        if weights is None:
            w = self.sizes.astype(float)
        else:
            unknown, missing = set(weights) - set(self.names), set(self.names) - set(weights)
            if unknown or missing:
                raise ValueError(f"weights: unknown datasets {sorted(unknown)}, missing {sorted(missing)}")
            w = np.array([float(weights[n]) for n in self.names])
        w = np.where(self.sizes > 0, w, 0.0)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("need a positive weight on at least one non-empty dataset")
        self.weights = w / w.sum()
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self._per_pass = np.maximum(1, self.sizes // self.batch_size)
        nominal = int(self._per_pass[self.sizes > 0].sum())
        self.num_batches = int(num_batches) if num_batches is not None else nominal
        self.step = 0
        self._counts = np.zeros(len(self.names), dtype=np.int64)
        self._block_cache: tuple[int, np.ndarray] | None = None
        self._perm_cache: dict[int, tuple[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.num_batches

    def _block(self, b: int) -> np.ndarray:
        if self._block_cache is None or self._block_cache[0] != b:
            rng = np.random.default_rng([self.seed, 0, b])
            self._block_cache = (b, rng.choice(len(self.names), size=self.BLOCK, p=self.weights))
        return self._block_cache[1]

    def dataset_at(self, step: int) -> str:
        """Name of the source dataset of batch ``step``."""
        return self.names[int(self._block(step // self.BLOCK)[step % self.BLOCK])]

    def _perm(self, d: int, epoch: int) -> np.ndarray:
        cached = self._perm_cache.get(d)
        if cached is None or cached[0] != epoch:
            perm = np.random.default_rng([self.seed, 1, d, epoch]).permutation(int(self.sizes[d]))
            self._perm_cache[d] = cached = (epoch, perm)
        return cached[1]

    def _batch(self, d: int, k: int) -> list[int]:
        epoch, j = divmod(k, int(self._per_pass[d]))
        perm = self._perm(d, epoch)
        sl = perm[j * self.batch_size:(j + 1) * self.batch_size]
        return (sl + self.offsets[d]).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        while self.step < self.num_batches:
            d = int(self._block(self.step // self.BLOCK)[self.step % self.BLOCK])
            batch = self._batch(d, int(self._counts[d]))
            self._counts[d] += 1
            self.step += 1
            yield batch

    def _counts_before(self, step: int) -> np.ndarray:
        counts = np.zeros(len(self.names), dtype=np.int64)
        full, rest = divmod(step, self.BLOCK)
        for b in range(full):
            counts += np.bincount(self._block(b), minlength=len(self.names))
        if rest:
            counts += np.bincount(self._block(full)[:rest], minlength=len(self.names))
        return counts

    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        """Resume state (JSON-serialisable); ``step`` overrides the sampler's own position."""
        return {
            "step": int(self.step if step is None else step),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "sizes": dict(zip(self.names, self.sizes.tolist(), strict=True)),
            "weights": dict(zip(self.names, self.weights.tolist(), strict=True)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where ``state`` was taken; refuses a state from different data or settings."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "sizes"):
            if state[key] != mine[key]:
                raise ValueError(f"cannot resume: {key} differs (checkpoint {state[key]!r}, now {mine[key]!r})")
        w_old = np.array([state["weights"].get(n, -1.0) for n in self.names])
        if not np.allclose(w_old, self.weights):
            raise ValueError("cannot resume: dataset weights differ from the checkpoint")
        self.step = int(state["step"])
        self._counts = self._counts_before(self.step)
