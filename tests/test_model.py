"""BToksModel: token setup, positions, padding invariance, pooling, persistence and clear errors."""

import pytest
import torch

from btoks import BToksConfig, BToksModel, Sample
from btoks.backbones.tiny import tiny_backbone, tiny_tokenizer
from btoks.config import check_ntp_side

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llama"]


def _samples(family, rgb):
    out = [Sample(text="hi", id="short"), Sample(text="a much longer sentence about a cat on a sofa", id="long")]
    if family != "llama":
        out += [Sample(text="<image> look", images=[rgb(56, 56, 1)], id="img"),
                Sample(text="clip", video=[rgb(56, 56, i) for i in range(4)], id="vid")]
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_btoks_appended_initialised_and_padding_invariant(family, rgb):
    model = BToksModel(tiny_backbone(family), BToksConfig(num_btoks=4))
    emb = model.model.get_input_embeddings().weight
    eos = model.backbone.eos_token_id
    assert all(torch.equal(emb[i], emb[eos]) for i in model.btok_ids)
    samples = _samples(family, rgb)
    inputs = model.prepare(samples)
    assert (inputs.input_ids[:, -4:] == torch.tensor(model.btok_ids)).all()
    # BTok positions continue right after the last input position (all three M-RoPE axes for Qwen-VL)
    pos = inputs.position_ids
    last_input = pos[..., -5]
    for j in range(4):
        assert torch.equal(pos[..., -4 + j], last_input + 1 + j)
    batched = model.embed(samples)
    for i, s in enumerate(samples):
        alone = model.embed([s])[0]
        assert torch.allclose(batched[i], alone, atol=1e-5), s.id
    assert torch.allclose(batched.norm(dim=-1), torch.ones(len(samples)), atol=1e-5)


def test_pooling_modes_and_k0_baseline():
    bb = tiny_backbone("llama")
    base = BToksConfig(num_btoks=0)
    assert base.pooling == "last"
    model = BToksModel(bb, base)
    assert model.btok_ids == []
    s = [Sample(text="hello world")]
    out = model.backbone.forward(*(lambda i: (i.input_ids, i.attention_mask, i.position_ids))(model.prepare(s)))
    assert torch.allclose(model.embed(s)[0], torch.nn.functional.normalize(out.last_hidden_state[0, -1], dim=-1),
                          atol=1e-6)
    mean = BToksModel(bb, BToksConfig(num_btoks=0, pooling="mean"))
    expect = torch.nn.functional.normalize(out.last_hidden_state[0].mean(0), dim=-1)
    assert torch.allclose(mean.embed(s)[0], expect, atol=1e-6)
    raw = mean(mean.prepare(s))
    assert torch.allclose(raw.pooled[0], out.last_hidden_state[0].mean(0), atol=1e-6)  # raw vector, unnormalised


def test_save_load_roundtrip_full_and_lora(tmp_path, rgb):
    torch.manual_seed(0)
    model = BToksModel(tiny_backbone("qwen2_vl"), BToksConfig(num_btoks=4))
    with torch.no_grad():
        model.model.get_input_embeddings().weight[model.btok_ids] += 0.5  # "trained" rows must survive
    samples = _samples("qwen2_vl", rgb)
    ref = model.embed(samples)
    model.save_pretrained(tmp_path / "full")
    assert list((tmp_path / "full" / "backbone").glob("*.safetensors"))
    again = BToksModel.from_pretrained(tmp_path / "full")
    assert torch.allclose(again.embed(samples), ref, atol=1e-6)
    assert again.btok_ids == model.btok_ids

    # LoRA: adapter-only checkpoint on top of a base saved without BToks
    base_dir = tmp_path / "base"
    plain = tiny_backbone("llama", seed=1)
    plain.model.save_pretrained(base_dir)
    plain.tokenizer.save_pretrained(base_dir)
    lora = BToksModel.from_backbone(str(base_dir), BToksConfig(num_btoks=2))
    lora.apply_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for p in lora.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    texts = [Sample(text="a red circle"), Sample(text="the blue square on the right")]
    ref = lora.embed(texts)
    lora.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter").is_dir() and not (tmp_path / "lora" / "backbone").exists()
    assert torch.allclose(BToksModel.from_pretrained(tmp_path / "lora").embed(texts), ref, atol=1e-6)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"num_btoks.*-1"):
        BToksConfig(num_btoks=-1)
    with pytest.raises(ValueError, match="ntp_side 'sideways'"):
        check_ntp_side("sideways")
    with pytest.raises(ValueError, match=r"kv_mode.*'partial'"):
        BToksConfig(kv_mode="partial")
    bb = tiny_backbone("llama")
    bb.tokenizer.eos_token = None
    bb.model.config.eos_token_id = None
    with pytest.raises(ValueError, match="no EOS token"):
        BToksModel(bb, BToksConfig(num_btoks=2))
    bb = tiny_backbone("llama")
    BToksModel(bb, BToksConfig(num_btoks=2, btok_init="<|endoftext|>"))  # an explicit init works without EOS
    model = BToksModel(tiny_backbone("llama"), BToksConfig(num_btoks=2, target_max_length=16))
    with pytest.raises(ValueError, match=r"target of sample 'row-7'.*target_max_length=16"):
        model.prepare_targets(["word " * 40], ids=["row-7"])
    model.config.truncate_targets = True
    assert model.prepare_targets(["word " * 40]).input_ids.shape[1] == 16
    with pytest.raises(ValueError, match="empty"):
        model.prepare([Sample(text="", id="blank")])
    assert len(tiny_tokenizer()) > 100


def test_btok_init_modes():
    """``spare`` (authors): unused rows are kept; a full matrix grows (HF mean-resizing) and input rows copy
    EOS. ``eos`` (paper text): input and LM-head rows copy EOS."""
    bb = tiny_backbone("llama")
    bb.model.resize_token_embeddings(len(bb.tokenizer) + 8, mean_resizing=False)  # 8 unused rows
    before = bb.model.get_input_embeddings().weight.detach().clone()
    spare = BToksModel(bb, BToksConfig(num_btoks=4))
    ids = spare.btok_ids
    assert spare.model.get_input_embeddings().num_embeddings == before.shape[0]  # no growth
    assert torch.equal(spare.model.get_input_embeddings().weight[ids], before[ids])
    grown = BToksModel(tiny_backbone("llama"), BToksConfig(num_btoks=4))  # vocabulary full: must grow
    eos = grown.backbone.eos_token_id
    w_in, w_out = grown.model.get_input_embeddings().weight, grown.model.get_output_embeddings().weight
    assert torch.equal(w_in[grown.btok_ids], w_in[eos].expand(4, -1))
    assert not torch.equal(w_out[grown.btok_ids[0]], w_out[eos])  # LM-head rows: mean-resizing
    again = BToksModel(tiny_backbone("llama"), BToksConfig(num_btoks=4))
    assert torch.equal(again.model.get_output_embeddings().weight, w_out)  # seeded: a reload rebuilds them
    paper_text = BToksModel(tiny_backbone("llama"), BToksConfig(num_btoks=4, btok_init_mode="eos"))
    for w in (paper_text.model.get_input_embeddings().weight, paper_text.model.get_output_embeddings().weight):
        assert torch.equal(w[paper_text.btok_ids], w[eos].expand(4, -1))


def test_attention_pooling_head_trains_and_round_trips(tmp_path):
    """The v2 head is a trainable stage of its own: it gets gradients and is saved/loaded with the model."""
    model = BToksModel(tiny_backbone("llama"), BToksConfig(num_btoks=4, pooling="attention"))
    s = [Sample(text="a red circle"), Sample(text="a blue square on the left")]
    out = model(model.prepare(s))
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(2)) and out.pooled is not None
    out.embeddings.sum().backward()
    assert model.pooler.attention.weight.grad is not None and model.pooler.mlp[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.pooler.layer_norm.weight.add_(0.5)
    model.eval()
    ref = model.embed(s)
    model.save_pretrained(tmp_path / "m")
    assert torch.allclose(BToksModel.from_pretrained(tmp_path / "m").embed(s), ref, atol=1e-6)
