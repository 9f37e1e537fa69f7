"""BTok rows under LoRA: the same numbers as peft's ``trainable_token_indices`` (the outside reference, built
here directly), without its vocabulary-sized copy of the embedding matrix or dense embedding gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from btoks import BToksConfig, BToksModel, Sample
from btoks.backbones.tiny import tiny_backbone
from btoks.btok_rows import PEFT_ROWS, ROWS_FILE


class OpShapes(TorchDispatchMode):
    """Shapes of the new tensors ops produce (forward and backward; views of their inputs left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        self.shapes.update(tuple(t.shape) for t in tree_leaves(out)
                           if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs)
        return out


def _tie(hf: torch.nn.Module) -> None:
    hf.config.tie_word_embeddings = hf.config.get_text_config().tie_word_embeddings = True
    hf.tie_weights()


def _backbone(family: str, tied: bool):
    bb = tiny_backbone(family)
    if tied:
        _tie(bb.model)
    return bb


def _peft_tokens(model: BToksModel, **lora) -> None:
    """The previous path: peft's trainable tokens on the embedding (and, when tied, the LM head)."""
    cfg = LoraConfig(target_modules=model.backbone.lora_target_modules,
                     trainable_token_indices={model.backbone.embedding_module_name: model.btok_ids}, **lora)
    model.peft_model = get_peft_model(model.backbone.model, cfg, autocast_adapter_dtype=False)


def _peft_rows(model: BToksModel) -> torch.nn.Parameter:
    return next(p for n, p in model.named_parameters() if PEFT_ROWS in n.split("."))


def _samples(rgb) -> tuple[list[Sample], list[str]]:
    return ([Sample(text="<image> what is shown?", images=[rgb(56, 56, 1)]), Sample(text="a cat on a sofa")],
            ["a red circle", "the cat sleeps"])


LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True, init_lora_weights=False)


@pytest.mark.parametrize(("family", "tied", "gic"), [("qwen2_vl", True, "cache"), ("qwen2_vl", True, "mask"),
                                                     ("llama", False, "cache")])
def test_same_numbers_as_peft_trainable_tokens_without_a_vocabulary_sized_tensor(family, tied, gic, rgb):
    cfg = dict(num_btoks=4, gic_impl=gic)
    ours, ref = BToksModel(_backbone(family, tied), BToksConfig(**cfg)), BToksModel(_backbone(family, tied),
                                                                                   BToksConfig(**cfg))
    ours.apply_lora(r=4, alpha=8, dropout=0.0, dora=True, init=False)
    _peft_tokens(ref, **LORA)
    assert ours.btok_rows is not None and ours.btok_rows.tied == tied
    head = type(ref.backbone.model.get_output_embeddings()).__name__
    assert (head == "TrainableTokensWrapper") == tied  # the reference does patch a tied head
    ref.peft_model.load_state_dict(ours.peft_model.state_dict(), strict=False)  # same LoRA weights
    with torch.no_grad():
        ours.btok_rows.weight.add_(0.3 * torch.randn_like(ours.btok_rows.weight))  # "trained" rows
        _peft_rows(ref).copy_(ours.btok_rows.weight)

    samples, targets = _samples(rgb) if family != "llama" else ([Sample(text="hi there")], ["a reply"])
    probe = torch.randn(ours.embed(samples).shape[-1])
    results = []
    for model in (ours, ref):
        model.train()
        inputs, t = model.prepare(samples), model.prepare_targets(targets)
        with OpShapes() as ops:
            out = model(inputs, t)
            (out.gen_loss + out.embeddings @ probe).sum().backward()
        grads = {n: p.grad for n, p in model.peft_model.named_parameters() if "lora_" in n}
        results.append((out, grads, ops.shapes))
    (o, g, shapes), (ro, rg, ref_shapes) = results
    torch.testing.assert_close(o.embeddings, ro.embeddings, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(o.gen_loss, ro.gen_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(o.target_logits, ro.target_logits, atol=1e-5, rtol=1e-5)
    assert g.keys() == rg.keys() and len(g) > 10
    for name in g:
        torch.testing.assert_close(g[name], rg[name], atol=1e-6, rtol=1e-4, msg=name)
    torch.testing.assert_close(ours.btok_rows.weight.grad, _peft_rows(ref).grad, atol=1e-6, rtol=1e-4)

    embedding = ours.model.get_input_embeddings().weight
    full = tuple(embedding.shape)
    assert full in ref_shapes  # peft's per-forward index_copy and dense embedding gradient ...
    assert full not in shapes  # ... are gone: no op produced a vocabulary x hidden tensor
    assert not embedding.requires_grad and embedding.grad is None
    trainable = {n: p for n, p in ours.named_parameters() if p.requires_grad and "lora_" not in n}
    assert list(trainable) == ["btok_rows.weight"] and trainable["btok_rows.weight"].grad.numel() == 4 * full[1]

    ours.eval()  # merging writes the rows into the embedding (and the tied head): same embeddings and loss
    inputs, t = ours.prepare(samples), ours.prepare_targets(targets)
    with torch.no_grad():
        before = ours(inputs, t)
        ours.merge_adapters()
        after = ours(inputs, t)
    assert ours.btok_rows is None and ours.peft_model is None
    torch.testing.assert_close(after.embeddings, before.embeddings, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after.gen_loss, before.gen_loss, atol=1e-5, rtol=1e-4)


@pytest.fixture
def tied_base(tmp_path: Path) -> str:
    bb = _backbone("llama", tied=True)
    bb.model.save_pretrained(tmp_path / "base")
    bb.tokenizer.save_pretrained(tmp_path / "base")
    return str(tmp_path / "base")


def test_save_load_merge_and_folders_written_with_peft_trainable_tokens(tied_base, tmp_path):
    texts = [Sample(text="a red circle"), Sample(text="the blue square on the right")]
    model = BToksModel.from_backbone(tied_base, BToksConfig(num_btoks=2))
    model.apply_lora(r=4, alpha=8, dropout=0.0, init=False)
    assert model.btok_rows is not None and model.btok_rows.tied
    with torch.no_grad():
        model.btok_rows.weight.add_(0.5 * torch.randn_like(model.btok_rows.weight))
    model.eval()
    want = model.embed(texts)
    model.save_pretrained(tmp_path / "new")
    assert (tmp_path / "new" / ROWS_FILE).is_file()
    for merge in (False, True):
        again = BToksModel.from_pretrained(tmp_path / "new", merge=merge)
        torch.testing.assert_close(again.embed(texts), want, atol=1e-5, rtol=1e-4)
        assert (again.btok_rows is None) == merge  # merged: the rows are in the embedding
        frozen = [*again.model.parameters(), *([] if merge else [again.btok_rows.weight])]
        assert not any(p.requires_grad for p in frozen)  # loaded for inference, as peft's loading did

    old = BToksModel.from_backbone(tied_base, BToksConfig(num_btoks=2))  # a folder saved before BTokRows
    _peft_tokens(old, r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True)
    with torch.no_grad():
        _peft_rows(old).add_(0.5 * torch.randn_like(_peft_rows(old)))
    old.eval()
    want = old.embed(texts)
    old.save_pretrained(tmp_path / "old")
    assert not (tmp_path / "old" / ROWS_FILE).exists()
    for merge in (False, True):
        again = BToksModel.from_pretrained(tmp_path / "old", merge=merge)
        torch.testing.assert_close(again.embed(texts), want, atol=1e-5, rtol=1e-4)

    (tmp_path / "new" / ROWS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"btok_rows\.safetensors not found"):
        BToksModel.from_pretrained(tmp_path / "new")
