"""Parity with the authors' code: btoks' paper preset replays fixtures recorded by running their ``vlm2emb``
(transformers 4.57.3) on a tiny random Qwen2-VL — see tools/parity_fixtures.py and docs/parity.md.

Per case: the processed token ids, the embeddings of both sides, the contrastive and generative losses of one
training step (InfoNCE τ = 0.02, λ = 5, GradCache with length sorting, BTok-only KV or the full cache) and
selected gradients must agree to 1e-5 (gradients relative to their norm).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from btoks import BToksModel, Sample
from btoks.backbones import QwenVLBackbone
from btoks.backbones.tiny import tiny_tokenizer
from btoks.btok_rows import PEFT_ROWS, pop_peft_rows
from btoks.train import TrainConfig
from btoks.train.step import compute_gradients, prepare_batch

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "parity"
TOL = 1e-5


@cache
def meta() -> dict:
    return json.loads((FIX / "cases.json").read_text())


def preset() -> TrainConfig:
    return TrainConfig.from_yaml(ROOT / "configs" / "qwen2vl-2b-btoks.yaml")


def tiny_qwen2vl() -> QwenVLBackbone:
    """The fixture's tiny Qwen2-VL (shapes from cases.json), weights loaded later."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    m, tok = meta(), tiny_tokenizer()
    text = dict(m["text_config"])
    rope = {"rope_type": "default", "rope_theta": text.pop("rope_theta"), "mrope_section": m["mrope_section"]}
    text.update(rope_parameters=rope, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                bos_token_id=None)
    cfg = Qwen2VLConfig(text_config=text, vision_config=m["vision_config"], **m["token_ids"])
    cfg.tie_word_embeddings = False
    cfg._attn_implementation = "eager"
    return QwenVLBackbone(Qwen2VLForConditionalGeneration(cfg).eval(), tok)


def paper_model(case: dict) -> BToksModel:
    """btoks' paper preset on the fixture weights (the authors' model after their BTok setup)."""
    cfg = preset()
    model = BToksModel(tiny_qwen2vl(), cfg.btoks)
    assert model.btok_ids == meta()["btok_ids"]  # spare rows: no resize, same ids
    weights = {k: v.float() for k, v in load_file(FIX / "model.safetensors").items()}
    model.backbone.model.load_state_dict(weights, strict=True)
    if case["lora"]:
        model.apply_lora(cfg.lora_r, cfg.lora_alpha, 0.0, cfg.dora, target_modules=cfg.lora_target_modules)
        adapter = {f"base_model.model.{k}": v.float() for k, v in load_file(FIX / "adapter.safetensors").items()}
        rows = pop_peft_rows(adapter, "adapter.safetensors")  # their peft trainable tokens -> model.btok_rows
        assert rows is not None and model.btok_rows is not None
        model.btok_rows.load(rows, "adapter.safetensors")
        missing = model.peft_model.load_state_dict(adapter, strict=False)
        assert not missing.unexpected_keys
        assert not [k for k in missing.missing_keys if "lora_" in k]
    return model


def samples(case: dict) -> tuple[list[Sample], list[Sample]]:
    """The case's pairs as btoks samples; ``Sample.target`` marks the sides that generate (ntp_side)."""
    images = {k: Image.open(FIX / f"image_{k}.png").convert("RGB") for k in ("a", "b")}
    queries, positives = [], []
    for i, (q, qi, p, pi, side) in enumerate(case["pairs"]):
        queries.append(Sample(text=q, images=[images[qi]] if qi else [], id=f"q{i}",
                              target=_plain(p) if side in ("positive", "both") else None))
        positives.append(Sample(text=p, images=[images[pi]] if pi else [], id=f"p{i}",
                                target=_plain(q) if side in ("query", "both") else None))
    return queries, positives


def _plain(text: str) -> str:
    """A target as btoks' readers give it with ``gic_target="text"``: the other side's text, markers removed."""
    return text.replace("<image>", "").strip()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


CASES = sorted(meta()["cases"]) if (FIX / "cases.json").is_file() else []


@pytest.mark.parametrize("name", CASES)
def test_paper_preset_matches_authors_code(name):
    case = meta()["cases"][name]
    model = paper_model(case)
    model.config.kv_mode = case["kv_mode"]
    queries, positives = samples(case)
    for side, batch in (("query", queries), ("positive", positives)):
        inputs = model.prepare(batch)
        ids = [row[mask.bool()][:-4].tolist() for row, mask in zip(inputs.input_ids, inputs.attention_mask,
                                                                   strict=True)]
        assert ids == case["input_ids"][side]  # same token ids (prompt rendering, image placeholders)
        model.eval()
        emb = model.embed(batch)
        assert (emb - torch.tensor(case["embeddings"][side])).abs().max() < TOL
    model.train()
    model.zero_grad()
    cfg = preset()
    batch = prepare_batch(model, queries, positives, chunk_size=case["chunk"], sort_by_length=cfg.sort_by_length)
    losses = compute_gradients(model, batch, meta()["gen_weight"], temperature=meta()["temperature"])
    assert abs(losses.contrastive - case["contrastive"]) < TOL
    assert abs(losses.generative - case["generative"]) < TOL
    expected = load_file(FIX / f"grads_{name}.safetensors")
    hf = model.peft_model.base_model.model if case["lora"] else model.backbone.model
    got = {n: p.grad for n, p in hf.named_parameters() if p.grad is not None}
    for key, ref in expected.items():
        if key == "btok_rows":
            grad = got["model.language_model.embed_tokens.weight"][model.btok_ids]
        elif key == "lm_head_btok_rows":
            grad = got["lm_head.weight"][model.btok_ids]
        elif PEFT_ROWS in key.split("."):  # their trainable-token rows' gradient
            assert model.btok_rows is not None
            grad = model.btok_rows.weight.grad
        else:
            grad = got[key]
        assert _rel(grad, ref) < TOL, (name, key, _rel(grad, ref))


CHECKPOINTS = sorted(meta().get("checkpoints", {})) if (FIX / "cases.json").is_file() else []


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The backbone folder the fixture checkpoints name (``tiny-qwen2vl``): the fixture weights, saved."""
    bb = tiny_qwen2vl()
    weights = {k: v.float() for k, v in load_file(FIX / "model.safetensors").items()}
    bb.model.load_state_dict(weights, strict=True)
    path = tmp_path_factory.mktemp("authors") / "tiny-qwen2vl"
    bb.model.save_pretrained(path)
    bb.save_processors(str(path))
    return path


@pytest.mark.parametrize("version", CHECKPOINTS)
@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
def test_authors_checkpoint_loads_with_their_embeddings(version, merge, tiny_dir):
    """A run folder of the authors' code (base_model/ + checkpoint-1/ with their peft adapter; v2: the
    attention-pooling head in modules_to_save) loads through ``BToksModel.from_pretrained`` and embeds like
    their evaluation loader (PEFT load + merge)."""
    ref = meta()["checkpoints"][version]
    model = BToksModel.from_pretrained(FIX / f"authors_checkpoint_{version}", base_model=str(tiny_dir), merge=merge,
                                       attn_implementation="eager")
    assert model.config.pooling == {"v1": "btoks", "v2": "attention"}[version] and model.config.num_btoks == 4
    images = {k: Image.open(FIX / f"image_{k}.png").convert("RGB") for k in ("a", "b")}
    queries = [Sample(text=q, images=[images[i]] if i else []) for q, i in ref["queries"]]
    model.eval()
    emb = model.embed(queries)
    assert (emb - torch.tensor(ref["embeddings"])).abs().max() < TOL


def test_authors_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"btoks_config\.json not found"):
        BToksModel.from_pretrained(tmp_path)  # neither layout
    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    (ckpt / "adapter_config.json").write_text(json.dumps(
        {"auto_mapping": {"parent_library": "vlm2emb.model"}, "base_model_name_or_path": "/gone/base_model"}))
    with pytest.raises(FileNotFoundError, match="no base_model/ folder"):
        BToksModel.from_pretrained(tmp_path)  # newest checkpoint-N found, its base_model/ is missing


def test_authors_prompt_rendering_of_mmeb_train_rows():
    """``prompt_style: authors`` renders MMEB-train sides exactly as their loader (row 9); a negative their
    loader empties is dropped."""
    from btoks.data.authors_prompts import render_mmeb_train
    from btoks.data.readers import _train_row

    renders = meta().get("renders")
    if not renders:
        pytest.skip("fixture has no rendering rows")
    for item in renders:
        row = render_mmeb_train(item["row"], item["subset"])
        q, p, n = _train_row(row, 0)
        theirs = {k: v.replace("<|image_pad|>", "<image>") for k, v in item["text"].items()}
        assert q.text == theirs["query"], item["subset"]
        assert p.text == theirs["positive"], item["subset"]
        assert (n.text if n else "") == theirs["negative"], item["subset"]


def test_prompt_style_reaches_the_reader(tmp_path):
    from btoks.data.readers import read_train

    rows = [{"qry": "<|image_1|> Represent the given image for classification ", "qry_image_path": "x.png",
             "pos_text": "tench", "neg_text": "goldfish"}]
    (tmp_path / "ImageNet_1K.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    theirs = read_train(tmp_path / "ImageNet_1K.jsonl", dataset="ImageNet_1K", prompt_style="authors")[0]
    ours = read_train(tmp_path / "ImageNet_1K.jsonl", dataset="ImageNet_1K")[0]
    assert theirs.query.text == "<image>\nRepresent the given image for classification\n" and theirs.negative is None
    assert ours.query.text != theirs.query.text and ours.negative is not None
    with pytest.raises(ValueError, match="prompt_style"):
        read_train(tmp_path / "ImageNet_1K.jsonl", prompt_style="fancy")
