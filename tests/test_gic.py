"""Generative Information Condensation: the fast KV path equals the explicit Condensation Mask, and the mask
really cuts the input off from the targets."""

import pytest
import torch
from transformers import DynamicCache

from btoks import BToksConfig, BToksModel, Sample
from btoks.backbones.tiny import tiny_backbone
from btoks.masks import condensation_mask, to_additive


def _batch(family, rgb):
    samples = [Sample(text="a cat on a red sofa", id="a"), Sample(text="dog", id="b")]
    targets = ["a cat sits", None]
    if family != "llama":
        samples += [Sample(text="<image> what is shown", images=[rgb(56, 56, 1)], id="c"),
                    Sample(text="two <image> and <image>", images=[rgb(56, 28, 2), rgb(28, 56, 3)], id="d"),
                    Sample(text="a clip", video=[rgb(56, 56, i) for i in range(4)], id="e")]
        targets += ["a red circle", "two pictures", "it moves left"]
    return samples, targets


def test_image_targets_explicit_pass_equals_cache(rgb):
    """Full-input targets with images (``gic_target="input"``): the explicit ``[X|B|T]`` pass (gradient
    checkpointing's path) interleaves input and target images per row and matches the KV-cache path."""
    torch.manual_seed(0)
    model = BToksModel(tiny_backbone("qwen2_vl"), BToksConfig(num_btoks=4)).train()
    samples = [Sample(text="<image> what is shown", images=[rgb(56, 56, 1)]), Sample(text="a cat"),
               Sample(text="two <image> and <image>", images=[rgb(56, 28, 2), rgb(28, 56, 3)])]
    targets = [Sample(text="<image> a picture", images=[rgb(28, 28, 4)]), None, Sample(text="two pictures")]
    inputs, tb = model.prepare(samples), model.prepare_targets(targets)
    assert tb is not None and "pixel_values" in tb.media and (tb.labels == -100).sum() > 0
    results = {}
    for impl in ("cache", "mask"):
        model.config.gic_impl = impl
        model.zero_grad()
        out = model(inputs, tb)
        (out.gen_loss + out.embeddings.sum()).backward()
        results[impl] = (out.gen_loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                  if p.grad is not None})
    (loss_c, g_c), (loss_m, g_m) = results["cache"], results["mask"]
    assert torch.allclose(loss_c, loss_m, atol=1e-5)
    assert g_c.keys() == g_m.keys() and any("visual" in n for n in g_c)
    for name in g_c:
        assert torch.allclose(g_c[name], g_m[name], atol=1e-5), name


def test_mask_pattern_matches_design_table():
    # one row: X = 3 tokens (first is padding), B = 2, T = 3 (last is padding)
    x_b = torch.tensor([[0, 1, 1, 1, 1]])
    t = torch.tensor([[1, 1, 0]])
    m = condensation_mask(x_b, 2, t)[0, 0].int()
    expected = torch.tensor([
        #  X     X  X  B  B  T  T  T
        [1, 0, 0, 0, 0, 0, 0, 0],  # pad row: only itself
        [0, 1, 0, 0, 0, 0, 0, 0],  # X: causal over valid X
        [0, 1, 1, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0, 0],  # B: all valid X + causal B
        [0, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0],  # T: no X, all B, causal T
        [0, 0, 0, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],  # pad target row: only itself
    ])
    assert torch.equal(m, expected)
    full = condensation_mask(x_b, 2, t, "full")[0, 0].int()
    assert full[5, 1] == 1 and full[5, 2] == 1  # "no mask" ablation: targets see the input


@pytest.mark.parametrize("family", ["qwen2_vl", "llama"])
@pytest.mark.parametrize("kv_mode", ["compressed", "full"])
def test_fast_path_equals_explicit_mask(family, kv_mode, rgb):
    torch.manual_seed(0)
    model = BToksModel(tiny_backbone(family), BToksConfig(num_btoks=4, kv_mode=kv_mode)).train()
    samples, targets = _batch(family, rgb)
    inputs, tb = model.prepare(samples), model.prepare_targets(targets)
    results = {}
    for impl in ("cache", "mask"):
        model.config.gic_impl = impl
        model.zero_grad()
        out = model(inputs, tb)
        (out.gen_loss + (out.embeddings * torch.linspace(-1, 1, out.embeddings.shape[1])).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[impl] = (out.gen_loss.detach(), out.embeddings.detach(), grads)
    (loss_c, emb_c, g_c), (loss_m, emb_m, g_m) = results["cache"], results["mask"]
    assert torch.allclose(loss_c, loss_m, atol=1e-5)
    assert torch.allclose(emb_c, emb_m, atol=1e-5)
    assert g_c.keys() == g_m.keys() and len(g_c) > 10
    for name in g_c:
        assert torch.allclose(g_c[name], g_m[name], atol=1e-5), name
    btok_rows = model.model.get_input_embeddings().weight.grad[model.btok_ids]
    assert btok_rows.abs().sum() > 0  # the generative loss reaches the BTok embeddings


@pytest.mark.parametrize("family", ["qwen2_vl", "llama"])
def test_condensation_mask_blocks_query_leakage(family):
    """Perturb the query while holding the BToks' KV fixed: masked target logits stay, unmasked ones move."""
    torch.manual_seed(0)
    model = BToksModel(tiny_backbone(family), BToksConfig(num_btoks=4))
    bb, k = model.backbone, 4
    a = model.prepare([Sample(text="a red circle on the left")])
    b_ids = a.input_ids.clone()
    b_ids[:, :-k] = torch.randint(0, 300, b_ids[:, :-k].shape)  # same length, different query tokens
    assert not torch.equal(a.input_ids, b_ids)
    tb = model.prepare_targets(["a red circle"])
    with torch.no_grad():
        kv_a = bb.forward(a.input_ids, a.attention_mask, a.position_ids, use_cache=True).cache
        kv_b = bb.forward(b_ids, a.attention_mask, a.position_ids, use_cache=True).cache
        logits = {}
        for mode in ("compressed", "full"):
            for name, query_kv in (("same", kv_a), ("perturbed", kv_b)):
                cache = DynamicCache()
                for i, (la, lq) in enumerate(zip(kv_a.layers, query_kv.layers, strict=True)):
                    cache.update(torch.cat([lq.keys[:, :, :-k], la.keys[:, :, -k:]], 2),
                                 torch.cat([lq.values[:, :, :-k], la.values[:, :, -k:]], 2), i)
                lxb = a.input_ids.shape[1]
                mask = condensation_mask(a.attention_mask, k, tb.attention_mask, mode)[:, :, lxb:]
                pos = model.target_positions(a, torch.tensor([0]), tb.input_ids.shape[1])
                out = bb.forward(tb.input_ids, to_additive(mask, model.dtype), pos, cache=cache)
                logits[mode, name] = bb.lm_head(out.last_hidden_state)
    assert torch.allclose(logits["compressed", "same"], logits["compressed", "perturbed"], atol=1e-7, rtol=0)
    assert (logits["full", "same"] - logits["full", "perturbed"]).abs().max() > 1e-3
