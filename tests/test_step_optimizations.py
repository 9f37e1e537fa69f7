"""Training-step optimisations change cost, not gradients (docs/benchmarks.md, "Training step at the paper's scale")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from btoks import BToksConfig, BToksModel
from btoks.backbones.tiny import tiny_backbone
from btoks.data.examples import shapes
from btoks.train.step import compute_gradients, prepare_batch


def _model(family: str = "qwen2_vl", dora: bool = True, dropout: float = 0.0, **lora) -> BToksModel:
    torch.manual_seed(0)
    model = BToksModel(tiny_backbone(family, attn_implementation="sdpa"), BToksConfig(num_btoks=4, gen_weight=2.0))
    model.apply_lora(r=4, alpha=8, dropout=dropout, dora=dora, **lora)
    return model.train()


def _grads(model: BToksModel, **kwargs) -> dict[str, torch.Tensor]:
    pairs = list(shapes())[:6]
    batch = prepare_batch(model, [p.query for p in pairs], [p.positive for p in pairs], chunk_size=2)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    losses = compute_gradients(model, batch, gen_weight=2.0, **kwargs)
    assert losses.generative > 0
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol), name


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_gradcache_reuses_frozen_vision_features_with_equal_gradients(family: str) -> None:
    model = _model(family)
    calls = []
    model.backbone.model.model.visual.register_forward_hook(lambda *_: calls.append(1))
    reused = _grads(model, reuse_media=True)
    n_reused = len(calls)
    calls.clear()
    recomputed = _grads(model, reuse_media=False)
    assert n_reused * 2 == len(calls) == 6  # 3 image chunks: once each instead of once per pass
    _assert_same(reused, recomputed)


def test_trainable_vision_tower_is_never_reused() -> None:
    model = _model()
    for p in model.backbone.model.model.visual.parameters():
        p.requires_grad_(True)
    media = prepare_batch(model, [s.query for s in list(shapes())[:2]], [s.positive for s in list(shapes())[:2]])
    inputs = media.chunks["query"][0].inputs
    assert model.backbone.precompute_media(inputs.media) is inputs.media


def test_dora_without_dropout_skips_the_base_layer_rerun_with_equal_gradients() -> None:
    """peft re-runs each base linear layer on the dropped-out input unless dropout is the identity; a p=0
    dropout module takes that slow path, so it must give the same gradients as the fast one (p=0 → Identity)."""
    from torch.utils.flop_counter import FlopCounterMode

    fast = _model(dropout=0.0)
    slow = _model(dropout=0.0)
    for module in slow.backbone.model.modules():
        if hasattr(module, "lora_dropout") and hasattr(module, "lora_magnitude_vector"):
            module.lora_dropout["default"] = nn.Dropout(0.0)
    flops, grads = {}, {}
    for name, model in (("fast", fast), ("slow", slow)):
        with FlopCounterMode(display=False) as counter:
            grads[name] = _grads(model)
        flops[name] = counter.get_total_flops()
    assert flops["slow"] > 1.1 * flops["fast"]  # the extra F.linear per wrapped layer, forward and backward
    _assert_same(grads["fast"], grads["slow"], atol=1e-5)


def test_adapters_stay_in_the_compute_dtype_unless_asked() -> None:
    model = _model()
    model.backbone.model.to(torch.bfloat16)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.bfloat16 for p in lora)
    torch.manual_seed(0)
    upcast = BToksModel(tiny_backbone("qwen2_vl"), BToksConfig(num_btoks=4))
    upcast.backbone.model.to(torch.bfloat16)
    upcast.apply_lora(r=4, alpha=8, dropout=0.0, autocast_adapter_dtype=True)
    assert all(p.dtype == torch.float32 for n, p in upcast.named_parameters() if "lora_" in n)


def test_explicit_pass_with_image_targets_keeps_raw_pixels_and_equal_gradients() -> None:
    """The explicit [X|B|T] pass (gic_impl="mask", or gradient checkpointing) interleaves target images with
    input images, so GradCache must not swap in reused features there."""
    import dataclasses

    model = _model()
    model.config.gic_impl, model.config.gic_target = "mask", "input"
    pairs = list(shapes())[:4]
    queries = [p.query for p in pairs]
    # both sides carry images and the candidate generates the query (grounding / image-to-image style)
    positives = [dataclasses.replace(p.positive, images=p.query.images[:1], target="generate the query")
                 for p in pairs]
    assert all(q.images for q in queries)
    grads = []
    for reuse in (True, False):
        batch = prepare_batch(model, queries, positives, chunk_size=2)
        assert any(c.targets is not None and c.targets.media for c in batch.chunks["positive"])
        model.zero_grad(set_to_none=True)
        compute_gradients(model, batch, gen_weight=2.0, reuse_media=reuse)
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    _assert_same(*grads)
