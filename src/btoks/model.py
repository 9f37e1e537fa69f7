"""BToksModel: append K Bottleneck Tokens to every input, pool their final states, and train them with GIC."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from btoks.backbones import Backbone, ModelInputs, load_backbone
from btoks.config import BToksConfig
from btoks.data.sample import Sample
from btoks.losses import generative_loss
from btoks.masks import condensation_mask, to_additive

ADAPTER_DIR, BACKBONE_DIR = "adapter", "backbone"
_CHAT_WRAPS = (  # (prefix, suffix) for target wrapping, by the special tokens a tokenizer has
    ("<|im_start|>", "<|im_start|>assistant\n", "<|im_end|>"),
    ("<|start_header_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
)


@dataclass
class TargetBatch:
    """Right-padded GIC targets for the batch rows in ``rows``; ``labels`` is -100 where no loss applies."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor

    def to(self, device: torch.device | str) -> TargetBatch:
        return TargetBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels, self.rows)))


@dataclass
class EncodeOutput:
    embeddings: torch.Tensor
    gen_loss: torch.Tensor | None = None
    """Mean target-token CE scaled by (rows with a target ÷ rows), per design §1."""
    gen_loss_sum: torch.Tensor | None = None
    """Unnormalised token-sum CE, for normalising over a whole batch split into GradCache chunks."""
    target_logits: torch.Tensor | None = None


def btok_token(i: int) -> str:
    return f"<|btok_{i}|>"


class BToksModel(nn.Module):
    """A decoder backbone plus K Bottleneck Tokens. One class for every ablation: change ``config``."""

    def __init__(self, backbone: Backbone, config: BToksConfig | None = None) -> None:
        super().__init__()
        self.config = config or BToksConfig()
        self.backbone = backbone
        self.model = backbone.model  # registers the HF module so .parameters()/.to() see it
        self.peft_model: Any = None
        self.btok_ids = self._add_btoks()
        self.target_prefix, self.target_suffix = self._target_wrapping()

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone: Backbone | str, config: BToksConfig | None = None,
                      **load_kwargs: Any) -> BToksModel:
        """Wrap an adapter, or load one by hub name / path (``btoks-mini`` for the offline model)."""
        config = config or BToksConfig()
        if isinstance(backbone, str):
            config.base_model = config.base_model or backbone
            backbone = load_backbone(backbone, **load_kwargs)
        config.backbone = backbone.family
        return cls(backbone, config)

    def _add_btoks(self) -> list[int]:
        """Add ``<|btok_i|>`` tokens; new embedding rows start as copies of EOS (or ``btok_init``)."""
        k = self.config.num_btoks
        if k == 0:
            return []
        tok, model = self.backbone.tokenizer, self.backbone.model
        tokens = [btok_token(i) for i in range(k)]
        vocab = tok.get_vocab()
        new = [t for t in tokens if t not in vocab]
        if not new:
            return tok.convert_tokens_to_ids(tokens)  # reloaded model: rows are already trained
        if self.config.btok_init is not None:
            if self.config.btok_init not in vocab:
                raise ValueError(f"btok_init token {self.config.btok_init!r} is not in the tokenizer vocabulary")
            init_id = vocab[self.config.btok_init]
        else:
            init_id = self.backbone.eos_token_id
            if init_id is None:
                raise ValueError("backbone has no EOS token to initialise BToks from; set btok_init to a token")
        tok.add_tokens(new, special_tokens=True)
        ids = tok.convert_tokens_to_ids(tokens)
        if max(ids) >= model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():
            for emb in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
                emb.weight[ids] = emb.weight[init_id].clone()
        return ids

    def _target_wrapping(self) -> tuple[str, str]:
        """``<|im_start|>assistant\\n`` … ``<|im_end|>`` or the backbone's equivalents (config overrides)."""
        vocab = self.backbone.tokenizer.get_vocab()
        prefix, suffix = None, None
        for marker, pre, suf in _CHAT_WRAPS:
            if marker in vocab:
                prefix, suffix = pre, suf
                break
        tok = self.backbone.tokenizer
        fallback = tok.eos_token or ""
        prefix = self.config.target_prefix if self.config.target_prefix is not None else (
            prefix if prefix is not None else (tok.bos_token or fallback))
        suffix = self.config.target_suffix if self.config.target_suffix is not None else (suffix or fallback)
        return prefix, suffix

    def apply_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.05, dora: bool = True,
                   init: str | bool = "gaussian", autocast_adapter_dtype: bool = False) -> None:
        """LoRA/DoRA on the LLM projections (peft); BTok embedding rows stay trainable via trainable tokens.

        Adapters are kept in the model's dtype: peft's default (``autocast_adapter_dtype=True``) upcasts them to
        fp32 on a bf16 model, which makes every adapter activation saved for backward fp32 (+45 % saved bytes
        per chunk at Qwen2-VL-2B's shape, docs/benchmarks.md). With ``dora`` and ``dropout > 0`` peft runs
        each base linear layer a second time on the dropped-out input (1.4x a step's FLOPs at that shape).
        """
        from peft import LoraConfig, get_peft_model

        extra = {"trainable_token_indices": {self.backbone.embedding_module_name: self.btok_ids}} \
            if self.btok_ids else {}
        lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_dora=dora, init_lora_weights=init,
                          target_modules=self.backbone.lora_target_modules,
                          modules_to_save=self.backbone.modules_to_save or None, **extra)
        self.peft_model = get_peft_model(self.backbone.model, lora, autocast_adapter_dtype=autocast_adapter_dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- inputs ----------------------------------------------------------------------------------------------
    def prepare(self, samples: list[Sample]) -> ModelInputs:
        """Tokenise, append the BToks, left-pad: BToks are the last K columns of every row."""
        return self.backbone.build_inputs(samples, self.btok_ids, self.config.max_length)

    def prepare_targets(self, targets: list[str | None], ids: list[str] | None = None) -> TargetBatch | None:
        """Wrap and tokenise GIC targets; ``None`` entries have no target. Prefix tokens get label -100."""
        tok = self.backbone.tokenizer
        prefix = self.backbone.text_ids(self.target_prefix)
        suffix = self.backbone.text_ids(self.target_suffix)
        rows, seqs, labels = [], [], []
        room = self.config.target_max_length - len(prefix) - len(suffix)
        if room < 1:
            raise ValueError(f"target_max_length={self.config.target_max_length} leaves no room for text after the "
                             f"{len(prefix) + len(suffix)} wrapping tokens")
        for i, text in enumerate(targets):
            if text is None:
                continue
            if not text.strip():
                raise ValueError(f"empty target text for sample {ids[i] if ids else i!r}")
            body = self.backbone.text_ids(text)
            if len(body) > room:
                if not self.config.truncate_targets:
                    raise ValueError(
                        f"target of sample {ids[i] if ids else i!r} has {len(body) + len(prefix) + len(suffix)} "
                        f"tokens > target_max_length={self.config.target_max_length} (set truncate_targets to cut)")
                body = body[:room]
            body = body + suffix
            rows.append(i)
            seqs.append(prefix + body)
            labels.append([-100] * len(prefix) + body)
        if not rows:
            return None
        width = max(map(len, seqs))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        lab = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, (s, y) in enumerate(zip(seqs, labels, strict=True)):
            input_ids[r, : len(s)] = torch.tensor(s)
            lab[r, : len(y)] = torch.tensor(y)
            mask[r, : len(s)] = 1
        return TargetBatch(input_ids, mask, lab, torch.tensor(rows, dtype=torch.long))

    # ---- forward ---------------------------------------------------------------------------------------------
    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """btoks: mean of the K BTok states; last: last real token; mean: mean over real tokens."""
        if self.config.pooling == "btoks":
            emb = hidden[:, -self.config.num_btoks:].mean(dim=1)
        elif self.config.pooling == "last":
            emb = hidden[:, -1]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(emb.float(), dim=-1) if self.config.normalize else emb.float()

    def forward(self, inputs: ModelInputs, targets: TargetBatch | None = None) -> EncodeOutput:
        """Embeddings for ``inputs``; with ``targets`` also the GIC loss (targets see only the BToks)."""
        if targets is None or self.config.num_btoks == 0:
            out = self.backbone.forward(inputs.input_ids, inputs.attention_mask, inputs.position_ids, inputs.media)
            return EncodeOutput(self.pool(out.last_hidden_state, inputs.attention_mask))
        if self.config.gic_impl == "mask" or (self.training and getattr(self.model, "is_activation_checkpointing", False)):
            return self._forward_explicit(inputs, targets)
        return self._forward_cached(inputs, targets)

    def _target_positions(self, inputs: ModelInputs, rows: torch.Tensor, length: int) -> torch.Tensor:
        """Targets continue right after the last position of ``[X|B]`` (works for 1-D and M-RoPE ids)."""
        last = inputs.position_ids.index_select(-2, rows)[..., -1:]
        return last + 1 + torch.arange(length, device=last.device)

    def _forward_cached(self, inputs: ModelInputs, targets: TargetBatch) -> EncodeOutput:
        """Fast path: encode ``[X|B]`` once, keep only the BToks' per-layer KV, run T as a continuation."""
        out = self.backbone.forward(inputs.input_ids, inputs.attention_mask, inputs.position_ids, inputs.media,
                                    use_cache=True)
        emb = self.pool(out.last_hidden_state, inputs.attention_mask)
        rows = targets.rows
        cache, ctx_mask = self.btok_cache(inputs, out.past_key_values, rows)
        t_out = self.backbone.forward(
            targets.input_ids, torch.cat([ctx_mask, targets.attention_mask], dim=1),
            self._target_positions(inputs, rows, targets.input_ids.shape[1]), past_key_values=cache,
            use_cache=True,
        )
        return self._with_gen_loss(emb, self.backbone.lm_head(t_out.last_hidden_state), targets, len(inputs))

    def btok_cache(self, inputs: ModelInputs, past_key_values: Any = None, rows: torch.Tensor | None = None,
                   kv_mode: str | None = None) -> tuple[DynamicCache, torch.Tensor]:
        """The context a GIC target sees: per layer only the last K (BTok) keys/values of ``rows`` (all of
        ``[X|B]`` with ``kv_mode="full"``), and its 2-D attention mask. Shared by training and ``btoks decode``.

        ``past_key_values`` is the encode pass's cache; without it ``inputs`` are encoded here.
        """
        kv_mode = kv_mode or self.config.kv_mode
        if kv_mode not in ("compressed", "full"):
            raise ValueError(f"kv_mode must be 'compressed' or 'full', got {kv_mode!r}")
        if past_key_values is None:
            past_key_values = self.backbone.forward(inputs.input_ids, inputs.attention_mask, inputs.position_ids,
                                                    inputs.media, use_cache=True).past_key_values
        if rows is None:
            rows = torch.arange(len(inputs), device=inputs.input_ids.device)
        keep = self.config.num_btoks if kv_mode == "compressed" else inputs.input_ids.shape[1]
        cache = DynamicCache()
        for i, layer in enumerate(past_key_values.layers):
            cache.update(layer.keys[rows, :, -keep:], layer.values[rows, :, -keep:], i)
        return cache, inputs.attention_mask[rows, -keep:]

    def _forward_explicit(self, inputs: ModelInputs, targets: TargetBatch) -> EncodeOutput:
        """Reference path: one pass over ``[X|B|T]`` with the explicit Condensation Mask (masks.py)."""
        n, lxb = inputs.input_ids.shape
        width = targets.input_ids.shape[1]
        t_ids = torch.zeros((n, width), dtype=torch.long, device=inputs.input_ids.device)
        t_mask = torch.zeros_like(t_ids)
        t_ids[targets.rows], t_mask[targets.rows] = targets.input_ids, targets.attention_mask
        all_rows = torch.arange(n, device=t_ids.device)
        positions = torch.cat([inputs.position_ids, self._target_positions(inputs, all_rows, width)], dim=-1)
        mask = condensation_mask(inputs.attention_mask, self.config.num_btoks, t_mask, self.config.kv_mode)
        media = {k: (F.pad(v, (0, width)) if k == "mm_token_type_ids" else v) for k, v in inputs.media.items()}
        out = self.backbone.forward(torch.cat([inputs.input_ids, t_ids], dim=1), to_additive(mask, self.dtype),
                                    positions, media)
        hidden = out.last_hidden_state
        emb = self.pool(hidden[:, :lxb], inputs.attention_mask)
        return self._with_gen_loss(emb, self.backbone.lm_head(hidden[targets.rows, lxb:]), targets, n)

    @staticmethod
    def _with_gen_loss(emb: torch.Tensor, logits: torch.Tensor, targets: TargetBatch, n: int) -> EncodeOutput:
        return EncodeOutput(emb, *generative_loss(logits, targets.labels, n), logits)

    # ---- convenience -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, samples: list[Sample]) -> torch.Tensor:
        """Embeddings of one batch of samples (no progress bar, no bucketing; see ``encode``)."""
        return self(self.prepare(samples).to(self.device)).embeddings

    def encode(self, inputs: Any, **kwargs: Any) -> Any:
        """sentence-transformers style encoding of texts, images, videos or samples (see btoks.encode)."""
        from btoks.encode import encode

        return encode(self, inputs, **kwargs)

    def encode_query(self, inputs: Any, **kwargs: Any) -> Any:
        """``encode`` with the query instruction (argument or ``config.extra["query_instruction"]``)."""
        from btoks.encode import encode_query

        return encode_query(self, inputs, **kwargs)

    def encode_document(self, inputs: Any, **kwargs: Any) -> Any:
        """``encode`` with the document instruction (argument or ``config.extra["document_instruction"]``)."""
        from btoks.encode import encode_document

        return encode_document(self, inputs, **kwargs)

    # ---- persistence -----------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        """Write safetensors + ``btoks_config.json`` atomically; adapter-only when LoRA is applied."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            self.config.save(tmp)
            if self.peft_model is not None:
                if not self.config.base_model:
                    raise ValueError("adapter-only saving needs config.base_model (a hub name or path)")
                # BTok rows are saved as peft trainable tokens; the rest of the resized embedding is the base
                # model plus EOS-initialised rows, rebuilt on load, so the full matrix is not written.
                self.peft_model.save_pretrained(tmp / ADAPTER_DIR, save_embedding_layers=False)
            else:
                self.backbone.model.save_pretrained(tmp / BACKBONE_DIR)
                self.backbone.save_processors(str(tmp / BACKBONE_DIR))
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def from_pretrained(cls, path: str | Path, *, merge: bool = False, **load_kwargs: Any) -> BToksModel:
        """Load what ``save_pretrained`` wrote (the LoRA base is re-read from ``config.base_model``).

        ``merge=True`` folds a LoRA adapter into the weights for inference: same embeddings, no adapter
        overhead per forward (peft's trainable-token rows otherwise rebuild the embedding matrix every call).
        A merged model saves in full.
        """
        path = Path(path)
        config = BToksConfig.load(path)
        if (path / ADAPTER_DIR).is_dir():
            from peft import PeftModel

            model = cls(load_backbone(config.base_model, **load_kwargs), config)
            peft_model = PeftModel.from_pretrained(model.backbone.model, path / ADAPTER_DIR)
            if merge:
                model.backbone.model = model.model = peft_model.merge_and_unload()
            else:
                model.peft_model = peft_model
            return model
        return cls(load_backbone(str(path / BACKBONE_DIR), **load_kwargs), config)
