import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture
def rgb():
    """A deterministic random RGB image factory."""

    def make(w: int = 56, h: int = 56, seed: int = 0) -> Image.Image:
        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))

    return make


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted once per session into a temporary btoks cache (the user's cache is left alone)."""
    from btoks.backbones import mini_parts

    return mini_parts.smollm2_path(tmp_path_factory.mktemp("btoks-cache"))


@pytest.fixture
def btoks_cache(smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``$BTOKS_CACHE`` at the session cache so ``load_backbone("btoks-mini")`` finds SmolLM2."""
    monkeypatch.setenv("BTOKS_CACHE", str(smollm2_dir.parent))
    return smollm2_dir.parent


@pytest.fixture(scope="session")
def mini_mmeb_quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mini-MMEB (quick, seed 0), built once per session."""
    from btoks.data.mini_mmeb import build_mini_mmeb

    out = tmp_path_factory.mktemp("mini") / "mmeb"
    build_mini_mmeb(out, seed=0, size="quick")
    return out
