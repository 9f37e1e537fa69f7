"""`make gpu-check --tiny`: the GPU check's own code, run on CPU with the tiny Qwen2-VL (part of make test)."""

from __future__ import annotations

import json
from pathlib import Path

from btoks import gpucheck
from btoks.synthetic import arch_config


def test_tiny_gpu_check_runs_every_part_and_passes(tmp_path: Path) -> None:
    code = gpucheck.main(["--tiny", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    md = (tmp_path / "report.md").read_text()
    assert code == 0, md
    train = report["train"]["sdpa"]
    assert len(train["step_s"]) == 2 and train["finite"] and train["tokens_per_s"] > 0
    assert set(train["peak_gib"]) == set(gpucheck.PHASES)  # n/a on CPU, filled on a GPU
    assert report["encode"]["image_samples_per_s"] > 0 and report["encode"]["text_samples_per_s"] > 0
    assert report["encode"]["image_tokens_per_sample"] > report["encode"]["text_tokens_per_sample"]
    g = report["gic_agreement"]
    assert g["agree"] and g["loss_rel_diff"] < 0.02 and g["grad_cosine"] > 0.98
    assert report["two_process"]["equal"]  # gloo on CPU: 2 ranks x 4 pairs == 1 rank x 8 pairs
    assert "| sdpa |" in md and "PASS" in md


def test_shipped_architecture_is_qwen2_vl_2b() -> None:
    cfg = arch_config()
    text, vision = cfg.text_config, cfg.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.vocab_size, text.intermediate_size) == (1536, 28, 12, 2, 151936, 8960)
    assert (vision.depth, vision.embed_dim, vision.num_heads, vision.patch_size) == (32, 1280, 16, 14)
    assert cfg.tie_word_embeddings
    cut = arch_config(layers=1, vision_depth=2)
    assert cut.text_config.num_hidden_layers == 1 and cut.vision_config.depth == 2


def test_a_failing_part_is_reported_and_the_rest_still_runs(tmp_path: Path, monkeypatch) -> None:
    def broken(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail")

    monkeypatch.setattr(gpucheck, "encode_throughput", broken)
    code = gpucheck.main(["--tiny", "--no-two-process", "--steps", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 1 and not report["ok"]
    assert report["encode"] == {"error": "RuntimeError: CUDA out of memory. Tried to allocate 20.00 GiB"}
    assert report["gic_agreement"]["agree"] and report["train"]["sdpa"]["finite"]
    assert "**FAIL**" in (tmp_path / "report.md").read_text()
