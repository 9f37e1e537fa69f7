"""bench.simulate's shape-only execution counts exactly what a real step computes and saves."""

from __future__ import annotations

import contextlib

import pytest
import torch

from bench import simulate
from btoks.backbones.tiny import tiny_tokenizer
from btoks.synthetic import TINY_PAIRS, synthetic_pairs


@pytest.mark.parametrize("arm", [simulate.Arm(), simulate.Arm(gic_impl="mask", reuse_media=False)])
def test_shape_only_counts_equal_real_execution(arm: simulate.Arm, monkeypatch) -> None:
    pairs = synthetic_pairs(TINY_PAIRS["image-query"], 4, tiny_tokenizer(), seed=0)
    counted = {}
    for name, mode in (("real", contextlib.nullcontext), ("shape-only", simulate.ShapeOnly)):
        monkeypatch.setattr(simulate, "ShapeOnly", mode)
        torch.manual_seed(0)
        model = simulate.build_model(arm, 1, 1, tiny=True)
        counted[name] = simulate.measure(model, simulate.prepare(model, *pairs, arm, chunk=2), arm)
    assert counted["real"].flops > 0 and counted["real"].saved > 0
    assert counted["shape-only"] == counted["real"]
