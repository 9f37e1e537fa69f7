"""Analysis tools: attention shares with/without the Condensation Mask, BTok decoding, the ablation grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from btoks import BToksConfig, BToksModel, Sample
from btoks import model as model_mod
from btoks.analysis.ablate import _config_hash, cell_config, find_cell, make_cells, parse_grid
from btoks.analysis.attention import MaskLeakError, attention_shares
from btoks.analysis.decode import banned_ids, decode_btoks, generate_ids
from btoks.backbones.tiny import tiny_backbone
from btoks.cli import main
from btoks.eval import registry
from btoks.loading import load
from btoks.model import TargetBatch

QUERY, BTOKS, TARGET = 0, 1, 2
TEXT, VISION = 0, 1


def _samples(family: str, rgb) -> list[Sample]:
    text = Sample(text="a cat on a red sofa", target="a cat sits", id="t")
    if family == "llama":
        return [text, Sample(text="the quick brown fox", target="a fox", id="f")]
    return [Sample(text="<image> what is shown", images=[rgb(56, 56, 1)], target="a red circle", id="i"), text]


@pytest.fixture(scope="module")
def models() -> dict[str, BToksModel]:
    return {f: BToksModel(tiny_backbone(f), BToksConfig(num_btoks=4)).eval() for f in ("qwen2_vl", "llama")}


@pytest.mark.parametrize("family", ["qwen2_vl", "llama"])
def test_masked_query_share_is_zero_unmasked_positive(family, models, rgb):
    model = models[family]
    samples = _samples(family, rgb)
    res = attention_shares(model, samples)
    masked, unmasked, btok = (torch.from_numpy(res[k]) for k in ("masked", "unmasked", "btok"))
    n_layers = model.model.config.get_text_config().num_hidden_layers
    assert masked.shape == (2, n_layers, 4, 3) and btok.shape == masked.shape
    assert masked[..., QUERY].abs().max() <= 1e-7 and res["masked_query_max"] == 0.0
    assert unmasked[..., QUERY].min() > 0.01  # every sample, layer and head looks at the query without the mask
    for arr in (masked, unmasked, btok):  # the three groups partition each row's attention
        assert torch.allclose(arr.sum(-1), torch.ones(arr.shape[:-1]), atol=1e-5)
    # layer 0 sees identical inputs in both passes, so removing X only renormalises over B and T
    assert (masked[:, 0, :, BTOKS] >= unmasked[:, 0, :, BTOKS] - 1e-6).all()
    assert (masked[:, 0, :, TARGET] >= unmasked[:, 0, :, TARGET] - 1e-6).all()
    if family == "qwen2_vl":
        assert res["vision_fraction"][0] > 0 and btok[0, ..., VISION].min() > 0  # image sample: BToks see pixels
    assert res["vision_fraction"][-1] == 0 and btok[-1, ..., VISION].abs().max() == 0  # text-only sample


@pytest.mark.parametrize("family", ["qwen2_vl", "llama"])
def test_unmasked_equals_plain_causal_attention(family, models, rgb):
    """The "unmasked" pass is ordinary causal attention: same shares as a run with a plain 2-D mask."""
    model = models[family]
    sample = _samples(family, rgb)[0]
    res = attention_shares(model, [sample])
    inputs, tb = model.prepare([sample]), model.prepare_targets([sample.target])
    lxb, width = inputs.input_ids.shape[1], tb.input_ids.shape[1]
    ids = torch.cat([inputs.input_ids, tb.input_ids], 1)
    pos = torch.cat([inputs.position_ids, model.target_positions(inputs, torch.tensor([0]), width)], -1)
    media = {k: (torch.nn.functional.pad(v, (0, width)) if k == "mm_token_type_ids" else v)
             for k, v in inputs.media.items()}
    with torch.no_grad():
        out = model.backbone.forward(ids, torch.ones_like(ids), pos, media, output_attentions=True)
    k = model.config.num_btoks
    for layer, att in enumerate(out.attentions):
        rows = att[0, :, lxb:]  # (heads, T, L)
        expect = torch.stack([rows[..., :lxb - k].sum(-1), rows[..., lxb - k:lxb].sum(-1),
                              rows[..., lxb:].sum(-1)], -1).mean(1)
        assert torch.allclose(torch.from_numpy(res["unmasked"][0, layer]), expect, atol=1e-5)


def test_leak_is_detected(models, monkeypatch):
    """If the mask were not applied (here: the masked pass gets the causal mask), the analysis refuses."""
    real = model_mod.condensation_mask
    monkeypatch.setattr(model_mod, "condensation_mask", lambda m, k, t, mode="compressed": real(m, k, t, "full"))
    with pytest.raises(MaskLeakError, match="attend to the query"):
        attention_shares(models["llama"], [Sample(text="a red circle", target="red")])


def test_load_model_switches_sdpa_to_eager(tmp_path, rgb):
    path = tmp_path / "m"
    BToksModel(tiny_backbone("qwen2_vl", attn_implementation="sdpa"), BToksConfig(num_btoks=2)).save_pretrained(path)
    model = load(path, eager=True, merge=False)
    assert model.model.config._attn_implementation == "eager" and model.config.num_btoks == 2
    res = attention_shares(model, [Sample(text="<image> shape", images=[rgb(28, 28)], target="a circle")])
    assert res["masked"].shape[1:] == (2, 4, 3) and res["unmasked"][..., QUERY].min() > 0
    with pytest.raises(ValueError, match="num_btoks=0"):
        attention_shares(BToksModel(tiny_backbone("llama"), BToksConfig(num_btoks=0)),
                         [Sample(text="x", target="y")])


@pytest.mark.parametrize("family", ["qwen2_vl", "llama"])
def test_decode_matches_teacher_forced_gic_pass(family, models, rgb):
    model = models[family]
    sample = _samples(family, rgb)[0]
    text = decode_btoks(model, sample, max_new_tokens=8)
    assert isinstance(text, str) and text.strip()
    assert decode_btoks(model, [sample, "hello"], max_new_tokens=3)[0] == decode_btoks(model, sample, 3)
    # greedy ids fed back as a GIC target reproduce themselves through the training path's BTok cache
    ids = generate_ids(model, [sample], max_new_tokens=6)[0]
    prefix = model.backbone.text_ids(model.target_prefix)
    seq = torch.tensor([prefix + ids])
    with torch.no_grad():
        logits = model(model.prepare([sample]), TargetBatch(seq, torch.ones_like(seq), seq, torch.tensor([0])))
    logits = logits.target_logits[0]
    logits[:, banned_ids(model)] = float("-inf")
    assert logits[len(prefix) - 1:-1].argmax(-1).tolist() == ids
    # with the full input cache the continuation differs: decoding really reads only the BToks by default
    full = generate_ids(model, [sample], max_new_tokens=6, kv_mode="full")[0]
    assert full != ids


def test_decode_cli_and_k0_error(capsys, tmp_path, rgb):
    img = tmp_path / "x.png"
    rgb(56, 56).save(img)
    assert main(["decode", "tiny:qwen2_vl", "<image> what is it", "--image", str(img), "--max-new-tokens", "4",
                 "--out", str(tmp_path / "d.json")]) == 0
    printed = capsys.readouterr().out.strip()
    saved = json.loads((tmp_path / "d.json").read_text())["samples"][0]
    assert printed and saved["decoded"] == printed
    with pytest.raises(ValueError, match="num_btoks=0"):
        decode_btoks(BToksModel(tiny_backbone("llama"), BToksConfig(num_btoks=0)), "hi")


# ---------------------------------------------------------------- data fixtures


def _png(path: Path, color: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (28, 28), color).save(path)
    return str(path)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _train_dir(root: Path) -> Path:
    """A mini-MMEB-like folder: an image set (query → label) and a t2i set (the image generates the query)."""
    colors = [("red", (255, 0, 0)), ("blue", (0, 0, 255)), ("green", (0, 255, 0))]
    for i, (_name, rgb) in enumerate(colors):
        _png(root / "images" / f"{i}.png", rgb)
    _jsonl(root / "train" / "cls.jsonl", [
        {"qry": "<|image_1|> Represent the given image for classification", "qry_image_path": f"images/{i}.png",
         "pos_text": f"a {name} square", "pos_image_path": "", "neg_text": "", "neg_image_path": ""}
        for i, (name, _) in enumerate(colors)])
    _jsonl(root / "train" / "t2i.jsonl", [
        {"qry": f"a {name} square", "qry_image_path": "", "pos_text": "<|image_1|>",
         "pos_image_path": f"images/{i}.png", "neg_text": "", "neg_image_path": ""}
        for i, (name, _) in enumerate(colors)])
    (root / "manifest.json").write_text(json.dumps({"name": "fixture", "datasets": [], "train": [
        {"name": "cls", "path": "train/cls.jsonl", "ntp_side": "positive"},
        {"name": "t2i", "path": "train/t2i.jsonl", "ntp_side": "query"},
    ]}), encoding="utf-8")
    return root


def test_analyze_cli_writes_json_and_pngs(tmp_path, capsys):
    data = _train_dir(tmp_path / "data")
    out = tmp_path / "att"
    assert main(["analyze", "attention", "tiny:qwen2_vl", "--data", str(data), "--limit", "2", "--out", str(out),
                 "--num-btoks", "2"]) == 0
    res = json.loads((out / "attention.json").read_text())
    assert res["n_samples"] == 4 and set(res["per_dataset"]) == {"cls", "t2i"}
    assert res["num_btoks"] == 2 and res["masked_query_max"] == 0.0
    assert res["overall"]["masked"]["query"] == 0.0 and res["overall"]["unmasked"]["query"] > 0
    assert all(v == 0.0 for v in res["per_layer"]["masked"]["query"])
    assert 0 < res["overall"]["unmasked"]["query_first_token"] < res["overall"]["unmasked"]["query"]
    assert res["n_samples_with_vision"] == 4  # cls queries and t2i candidates are images
    assert res["overall"]["btok_with_vision"]["vision"] > 0
    for name in ("attention_summary.png", "attention_layer0.png", "attention_layer1.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 300
    assert "masked 0" in capsys.readouterr().out


# ---------------------------------------------------------------- ablation


def test_grid_parsing_and_reference():
    cells = make_cells(parse_grid(["btoks.num_btoks=0,1,4 btoks.kv_mode=compressed,full"]))
    assert [c.name for c in cells][:2] == ["num_btoks=0__kv_mode=compressed", "num_btoks=0__kv_mode=full"]
    assert len(cells) == 6 and cells[5].overrides == ["btoks.num_btoks=4", "btoks.kv_mode=full"]
    assert find_cell(cells, "num_btoks=4,kv_mode=full") is cells[5]
    assert find_cell(cells, "num_btoks=1__kv_mode=compressed") is cells[2]
    with pytest.raises(ValueError, match="matches 3 cells"):
        find_cell(cells, "kv_mode=full")
    with pytest.raises(ValueError, match="matched"):
        parse_grid(["seed=1,2"])
    # K = 0 has no BToks: its λ and mask settings do not change the training run, so it is trained once
    lam = make_cells(parse_grid(["btoks.num_btoks=0,2", "btoks.gen_weight=0,5"]))
    hashes = [_config_hash(cell_config(c, "configs/tiny.yaml", [], Path("out")).to_dict()) for c in lam]
    assert hashes[0] == hashes[1] and len(set(hashes)) == 3
    with pytest.raises(ValueError, match="key=v1,v2"):
        parse_grid(["btoks.num_btoks"])


@pytest.fixture
def eval_dir(tmp_path: Path):
    root = tmp_path / "eval"
    colors = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)]
    rows = []
    for k, c in enumerate(colors):
        _png(root / "img" / f"{k}.png", c)
        rows.append({"qry_inst": "<|image_1|> Represent the given image for classification", "qry_text": "",
                     "qry_img_path": f"{k}.png", "tgt_inst": "",
                     "tgt_text": [f"color {k}", f"color {(k + 1) % 4}", f"color {(k + 2) % 4}"],
                     "tgt_img_path": ["", "", ""]})
    _jsonl(root / "img" / "test.jsonl", rows)
    _jsonl(root / "txt" / "test.jsonl", [
        {"qry_inst": "", "qry_text": f"a {w} thing", "qry_img_path": "", "tgt_inst": "",
         "tgt_text": [f"{w}", "other", "none"], "tgt_img_path": ["", "", ""]} for w in ("red", "blue", "cat")])
    (root / "manifest.json").write_text(json.dumps({"datasets": [
        {"name": "abl-img", "modality": "image", "meta_task": "classification", "metric": "hit@1", "path": "img"},
        {"name": "abl-txt", "modality": "image", "meta_task": "retrieval", "metric": "hit@1", "path": "txt"},
    ]}), encoding="utf-8")
    yield root
    for name in ("abl-img", "abl-txt"):
        registry.unregister(name)


def test_ablation_grid_end_to_end_and_resume(tmp_path, eval_dir, capsys, monkeypatch):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model: tiny:qwen2_vl\nexamples: shapes,text\nlora: false\nlr: 1.0e-3\nwarmup_steps: 0\n"
                   "max_steps: 2\nbatch_size: 4\ngrad_cache_chunk: null\nlog_every: 1\nsave_every: 2\n"
                   "btoks: {num_btoks: 2, gen_weight: 1.0, gen_steps: null, max_length: 128, "
                   "target_max_length: 32, truncate_targets: true, temperature: 0.1}\n", encoding="utf-8")
    out = tmp_path / "abl"
    args = ["ablate", str(cfg), "--grid", "btoks.num_btoks=0,2", "--eval-data", str(eval_dir), "--out", str(out),
            "--reference", "num_btoks=2", "--resamples", "200"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[1/2] num_btoks=0" in printed and "[2/2] num_btoks=2" in printed
    for cell, k in (("num_btoks=0", 0), ("num_btoks=2", 2)):
        saved = json.loads((out / cell / "model" / "btoks_config.json").read_text())
        assert saved["num_btoks"] == k and saved["pooling"] == ("last" if k == 0 else "btoks")
        assert (out / cell / "eval" / "abl-img.json").is_file() and (out / cell / "cell.json").is_file()
        train_cfg = json.loads((out / cell / "train_config.json").read_text())
        assert train_cfg["max_steps"] == 2 and train_cfg["seed"] == 42  # matched: only K differs
    res = json.loads((out / "ablation.json").read_text())
    assert res["reference"] == "num_btoks=2" and list(res["tests"]) == ["num_btoks=0"]
    test = res["tests"]["num_btoks=0"]
    cells = {c["cell"]: c for c in res["cells"]}
    assert test["delta"] == pytest.approx(cells["num_btoks=0"]["overall"] - cells["num_btoks=2"]["overall"])
    assert test["lo"] <= test["delta"] <= test["hi"] and test["n_datasets"] == 2
    assert (out / "compare" / "num_btoks=0" / "compare.json").is_file()
    md = (out / "ablation.md").read_text()
    assert "| `num_btoks=2` | 2 |" in md and "ref" in md and "abl-img" in md
    with Image.open(out / "ablation.png") as im:
        assert im.size[0] > 300

    from btoks.analysis import ablate as ablate_mod

    monkeypatch.setattr("btoks.train.trainer.Trainer.train", lambda self: pytest.fail("finished cell retrained"))
    again = ablate_mod.ablate(cfg, ["btoks.num_btoks=0,2"], eval_dir, out, reference="num_btoks=2",
                              n_resamples=200, log=lambda s: None)
    assert again["tests"]["num_btoks=0"]["delta"] == pytest.approx(test["delta"])
    with pytest.raises(ValueError, match="different configuration"):
        ablate_mod.ablate(cfg, ["btoks.num_btoks=0,2"], eval_dir, out, common=["lr=0.5"], log=lambda s: None)
