"""``btoks.load``: the one way every command (eval, serve, index, search, analyze, decode) gets a model.

It used to be three private loaders with different rules (which folders they accepted, whether LoRA was merged,
which device, what error a wrong path gave); now they all accept the same specs and fail the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from btoks.config import CONFIG_NAME, BToksConfig
from btoks.errors import BToksError

if TYPE_CHECKING:
    from btoks.model import BToksModel

log = logging.getLogger(__name__)


class ModelLoadError(BToksError):
    """``spec`` names no loadable model."""


def resolve_model_dir(spec: str | Path) -> Path | None:
    """The saved-model folder ``spec`` points to: itself, or ``spec/model`` for a training run folder."""
    path = Path(spec).expanduser()
    for candidate in (path, path / "model"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return None


def load(
    spec: str | Path | BToksModel,
    *,
    device: str | None = None,
    merge: bool = True,
    eager: bool = False,
    num_btoks: int = 4,
) -> BToksModel:
    """A model in eval mode from ``spec``:

    - a folder written by ``save_pretrained`` (``btoks_config.json``), or a training run folder holding one
      in ``model/``;
    - a backbone (hub name or local Hugging Face folder, ``btoks-mini``, ``tiny:<family>``) wrapped with
      ``num_btoks`` fresh, untrained BToks (a baseline, or for analysis);
    - an already loaded :class:`~btoks.model.BToksModel` (moved / switched as asked).

    ``merge`` folds a LoRA adapter into the weights (same embeddings, faster; keep it ``False`` to train on);
    ``device`` defaults to CUDA when available, else CPU; ``eager`` switches attention to the eager
    implementation, the only one that returns attention weights.
    """
    from btoks.model import BToksModel

    if not isinstance(spec, str | os.PathLike):  # a loaded model (or a stand-in with the same methods)
        model = spec
    else:
        folder = resolve_model_dir(spec)
        path = Path(spec).expanduser()
        if folder is not None:
            model = BToksModel.from_pretrained(folder, merge=merge)
        elif not path.exists() and str(spec).startswith(("/", ".", "~")):
            raise ModelLoadError(f"{spec}: no such model folder")
        elif path.is_dir() and not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{spec}: not a btoks model folder (no {CONFIG_NAME}, nor model/{CONFIG_NAME} of a training run) "
                "and not a Hugging Face model folder"
            )
        else:
            try:
                model = BToksModel.from_backbone(str(spec), BToksConfig(num_btoks=num_btoks))
            except (OSError, ValueError) as e:
                raise ModelLoadError(f"cannot load model {str(spec)!r}: {str(e).splitlines()[0]}") from e
            log.warning("%s: a bare backbone with %d untrained BToks (not a trained btoks model)", spec, num_btoks)
    if eager:
        use_eager_attention(model)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else None
    if device:
        model.to(device)
    return model.eval()


def use_eager_attention(model: BToksModel) -> None:
    """Switch every attention module of the backbone to ``eager`` (sdpa/flash return no attention weights)."""
    hf = model.model
    try:
        hf.set_attn_implementation("eager")
    except (AttributeError, ValueError, ImportError, NotImplementedError) as e:
        log.debug("set_attn_implementation failed (%s); setting the configs directly", e)
    for module in hf.modules():  # sub-models that set_attn_implementation did not reach (composed models)
        cfg = getattr(module, "config", None)
        if cfg is not None and getattr(cfg, "_attn_implementation", "eager") != "eager":
            cfg._attn_implementation = "eager"


__all__ = ["ModelLoadError", "load", "resolve_model_dir", "use_eager_attention"]
