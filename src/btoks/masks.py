"""The Condensation Mask as an explicit attention pattern over ``[X | B | T]``.

This is the reference the fast KV-cache path is tested against, and the path used when gradient checkpointing
disables KV caches. Layout per row: ``X|B`` left-padded (the last K columns are the BToks), then ``T``
right-padded.

| rows → | X      | B      | T      |
|--------|--------|--------|--------|
| X      | causal | –      | –      |
| B      | all    | causal | –      |
| T      | none   | all K  | causal |

With ``kv_mode="full"`` (the "no mask" ablation) T rows see X too.
"""

from __future__ import annotations

import torch

from btoks.config import KVMode


def condensation_mask(
    input_mask: torch.Tensor, num_btoks: int, target_mask: torch.Tensor, kv_mode: KVMode = "compressed"
) -> torch.Tensor:
    """Boolean ``(B, 1, L, L)`` mask, True where attention is allowed; ``L = Lxb + T``.

    ``input_mask`` (B, Lxb) marks valid ``X|B`` tokens (BToks are the last ``num_btoks`` columns);
    ``target_mask`` (B, T) marks valid target tokens. Padding rows attend only to themselves so no softmax row is
    empty.
    """
    if kv_mode not in ("compressed", "full"):
        raise ValueError(f"kv_mode must be 'compressed' or 'full', got {kv_mode!r}")
    lxb, lt = input_mask.shape[1], target_mask.shape[1]
    if num_btoks > lxb:
        raise ValueError(f"num_btoks={num_btoks} exceeds the input length {lxb}")
    length = lxb + lt
    device = input_mask.device
    valid = torch.cat([input_mask, target_mask], dim=1).bool()  # (B, L)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = causal[None] & valid[:, None, :]
    if kv_mode == "compressed":
        is_target_row = torch.arange(length, device=device) >= lxb
        is_input_col = torch.arange(length, device=device) < lxb - num_btoks
        allowed = allowed & ~(is_target_row[:, None] & is_input_col[None, :])[None]
    allowed = allowed & valid[:, :, None]
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=device)[None]
    return allowed[:, None]


def to_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask → additive float mask (0 allowed, dtype min blocked), what eager and sdpa both accept."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
