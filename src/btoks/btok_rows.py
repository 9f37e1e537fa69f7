"""The K trainable BTok embedding rows of an adapter-trained model, without a vocabulary-sized copy.

peft's ``trainable_token_indices`` rebuilds the whole embedding matrix (``index_copy``) in every forward, keeps
that copy for backward when the LM head is tied (GIC's logits), and gives the frozen matrix a dense gradient to
update K rows. ``BTokRows`` holds the K rows itself and patches them in where the frozen matrix is used:
the input embedding of a BTok id is its row, and with a tied LM head the logit of a BTok id is the hidden state
times its row. Same semantics as peft's (rows *replace* the matrix's), so the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROWS_FILE = "btok_rows.safetensors"
PEFT_ROWS = "trainable_tokens_delta"  # peft's name for the rows in an adapter written with trainable tokens


class BTokRows(nn.Module):
    """Trainable rows for token ``ids`` of ``model``'s (frozen) input embedding, and of its LM head when tied."""

    def __init__(self, model: nn.Module, ids: list[int]) -> None:
        super().__init__()
        embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
        self.weight = nn.Parameter(embedding.weight[ids].detach().clone())
        self.register_buffer("ids", torch.tensor(ids, device=self.weight.device), persistent=False)
        self.tied = head is not None and head.weight is embedding.weight
        self._embedding = [embedding]  # in a list: not a submodule (no second copy in state dicts or .to())
        self._hooks = [embedding.register_forward_hook(self._embed)]
        if self.tied:
            self._hooks.append(head.register_forward_hook(self._logits))

    def _embed(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        match = args[0].unsqueeze(-1) == self.ids  # (..., K): no host sync, nothing vocabulary-sized
        rows = self.weight.to(out.dtype)
        scale = getattr(module, "embed_scale", None)  # scaled embeddings (Gemma) scale their output
        if scale is not None:
            rows = rows * scale.to(rows.dtype)
        return torch.where(match.any(-1, keepdim=True), rows[match.int().argmax(-1)], out)

    def _logits(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        # In place: the head's output is not saved by its backward, so no logits-sized copy either.
        return out.index_copy_(-1, self.ids, F.linear(args[0], self.weight.to(args[0].dtype)))

    def load(self, rows: torch.Tensor, source: str) -> None:
        if rows.shape != self.weight.shape:
            raise ValueError(f"{source}: BTok rows of shape {tuple(rows.shape)}, the model needs "
                             f"{tuple(self.weight.shape)} (K x hidden)")
        with torch.no_grad():
            self.weight.copy_(rows)

    @torch.no_grad()
    def merge(self) -> None:
        """Write the rows into the embedding matrix (and so the tied head) and stop patching."""
        embedding = self._embedding[0]
        embedding.weight[self.ids] = self.weight.to(embedding.weight.dtype)
        self.remove()

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def pop_peft_rows(state: dict[str, torch.Tensor], source: str) -> torch.Tensor | None:
    """Remove peft trainable-token rows from an adapter state dict (btoks saves before ``BTokRows``, the
    authors' checkpoints) and return them; a tied head's rows, if present, must equal the embedding's."""
    keys = [k for k in state if PEFT_ROWS in k.split(".")]
    found = [state.pop(k) for k in keys]
    for key, rows in zip(keys[1:], found[1:], strict=True):
        if not torch.equal(rows, found[0]):
            raise ValueError(f"{source}: trainable-token rows {key!r} differ from {keys[0]!r}")
    return found[0] if found else None
