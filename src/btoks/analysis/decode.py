"""What did the bottleneck keep? Greedy generation from the BTok-only KV cache.

The input is encoded once; per layer only the K BToks' keys/values are kept (``BToksModel.btok_cache``, the
same context GIC trains with), and text is generated as a continuation of the target prefix
(``<|im_start|>assistant\\n`` or the backbone's equivalent) at positions right after the last ``[X|B]``
position. Whatever the generated text says about the input must have passed through the K BTok states.
``kv_mode="full"`` keeps the whole ``[X|B]`` cache instead: the control that shows what the model would say
with the input in view.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from btoks.data.sample import Sample
from btoks.model import BToksModel


def _as_sample(x: Sample | str) -> Sample:
    if isinstance(x, Sample):
        return x
    if isinstance(x, str):
        return Sample(text=x)
    raise ValueError(f"decode takes Sample objects or strings, got {type(x).__name__}")


def banned_ids(model: BToksModel) -> list[int]:
    """Ids greedy decoding never emits: vision placeholders and BToks are not text, and a placeholder without
    pixels would break multimodal backbones."""
    return sorted(set(model.backbone.vision_token_ids) | set(model.btok_ids))


@torch.no_grad()
def generate_ids(model: BToksModel, batch: Sequence[Sample], max_new_tokens: int = 32,
                 kv_mode: str | None = None) -> list[list[int]]:
    """Greedy token ids generated after the target prefix from each sample's BTok KV cache (stop token
    excluded). Generation stops at the target suffix (e.g. ``<|im_end|>``) or EOS."""
    if model.config.num_btoks == 0:
        raise ValueError("decode needs BToks: the model has num_btoks=0 (last-token pooling keeps no bottleneck)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    if not batch:
        return []
    model.eval()
    bb, device = model.backbone, model.device
    inputs = model.prepare(batch).to(device)
    cache, ctx_mask = model.btok_cache(inputs, kv_mode=kv_mode)
    prefix = bb.text_ids(model.target_prefix)
    if not prefix:
        raise ValueError("the model's target_prefix is empty: nothing to start generation from "
                         "(set BToksConfig.target_prefix)")
    n = len(batch)
    step_ids = torch.tensor([prefix] * n, dtype=torch.long, device=device)
    positions = model.target_positions(inputs, torch.arange(n, device=device), len(prefix))
    mask = torch.cat([ctx_mask, torch.ones((n, len(prefix)), dtype=ctx_mask.dtype, device=device)], dim=1)
    suffix = bb.text_ids(model.target_suffix)
    stop = {i for i in (bb.eos_token_id, suffix[0] if suffix else None) if i is not None}
    banned = banned_ids(model)
    generated: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for _ in range(max_new_tokens):
        out = bb.forward(step_ids, mask, positions, cache=cache, use_cache=True)
        cache = out.cache
        logits = bb.lm_head(out.last_hidden_state[:, -1]).float()
        if banned:
            logits[:, banned] = float("-inf")
        nxt = logits.argmax(-1)
        for i, tok in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if tok in stop:
                done[i] = True
            else:
                generated[i].append(tok)
        if all(done):
            break
        step_ids = nxt[:, None]
        positions = positions[..., -1:] + 1
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
    return generated


def decode_btoks(model: BToksModel, samples: Sample | str | Sequence[Sample | str], max_new_tokens: int = 32,
                 kv_mode: str | None = None) -> str | list[str]:
    """Greedy text generated from each sample's BTok KV cache: one string for one sample or text, a list for
    a list. ``kv_mode="full"`` decodes from the whole ``[X|B]`` cache (the with-input control)."""
    single = isinstance(samples, Sample | str)
    batch = [_as_sample(s) for s in ([samples] if single else samples)]  # type: ignore[union-attr]
    ids = generate_ids(model, batch, max_new_tokens, kv_mode)
    texts = [model.backbone.tokenizer.decode(g, skip_special_tokens=True) for g in ids]
    return texts[0] if single else texts
