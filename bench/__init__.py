"""btoks benchmarks: each module measures one cost of BToks / GIC as a ratio taken in a single run.

Ratios (not absolute times) are what we report, because both sides of a ratio are measured in the same process,
interleaved round by round, so machine speed and background load mostly cancel. Run everything with
``make bench`` (``python -m bench.run_all``) or one table with ``python -m bench.<name>``; see
docs/benchmarks.md for the latest numbers. Benchmarks are never part of ``make test``.

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here (set it to override): on a shared machine with more runnable
threads than cores, spinning OpenMP workers made a 2-thread torch forward ~2.5x slower and very noisy.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / faiss load their OpenMP runtime

TABLES = ("encode_ratio", "encode_overhead", "train_step", "gradcache_memory", "search", "eval_cache")
"""Module names, in the order ``run_all`` runs them (the numbering of docs/benchmarks.md)."""
