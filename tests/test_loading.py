"""btoks.load: the one model loader of eval, serve, index, search and analysis."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from _serve_helpers import tiny_model, tiny_model_dir

import btoks
from btoks.encode import encode
from btoks.loading import ModelLoadError, resolve_model_dir


def test_saved_folder_run_folder_and_loaded_model_give_the_same_embeddings(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir(), run / "model")  # what `btoks train` leaves: OUTPUT_DIR/model
    assert resolve_model_dir(run) == run / "model" and resolve_model_dir(tmp_path) is None
    a = btoks.load(tiny_model_dir(), device="cpu")
    b = btoks.load(run, device="cpu", merge=False)
    c = btoks.load(tiny_model(), device="cpu")
    assert not a.training and c is tiny_model()
    want = encode(tiny_model(), "a red circle")
    for m in (a, b, c):
        torch.testing.assert_close(torch.as_tensor(encode(m, "a red circle")), torch.as_tensor(want))


def test_eager_switches_attention(tmp_path: Path) -> None:
    model = btoks.load(tiny_model_dir(), eager=True, device="cpu")
    assert all(getattr(m.config, "_attn_implementation", "eager") == "eager"
               for m in model.model.modules() if getattr(m, "config", None) is not None)


def test_wrong_specs_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    with pytest.raises(ModelLoadError, match="not a btoks model folder"):
        btoks.load(tmp_path / "notes")
    with pytest.raises(ModelLoadError, match="no such model folder"):
        btoks.load(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="cannot load model 'no-such-org/no-such-model'"):
        btoks.load("no-such-org/no-such-model")
