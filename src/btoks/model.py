"""BToksModel: append K Bottleneck Tokens to every input, pool their final states, and train them with GIC."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from btoks.backbones import Backbone, ModelInputs, load_backbone
from btoks.backbones.base import TEXT, TokenRow
from btoks.btok_rows import ROWS_FILE, BTokRows, pop_peft_rows
from btoks.config import CONFIG_NAME, BToksConfig
from btoks.data.sample import Sample
from btoks.losses import generative_loss
from btoks.masks import condensation_mask, to_additive
from btoks.pooling import build_pooler

ADAPTER_DIR, BACKBONE_DIR, POOLER_FILE = "adapter", "backbone", "pooler.safetensors"
_CHAT_WRAPS = (  # (prefix, suffix) for target wrapping, by the special tokens a tokenizer has
    ("<|im_start|>", "<|im_start|>assistant\n", "<|im_end|>"),
    ("<|start_header_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
)

# peft's get_peft_model probes transformers' deprecated `is_gradient_checkpointing` property; the warning is
# about peft's call, not ours, and would otherwise print once per process that adds adapters.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@dataclass
class TargetBatch:
    """Right-padded GIC targets for the batch rows in ``rows``; ``labels`` is -100 where no loss applies.

    ``position_ids`` are the targets' own positions from 0 (M-RoPE for targets with images); the backbone
    shifts them to where targets start. ``media`` holds the targets' pixel kwargs (full-input targets).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor
    position_ids: torch.Tensor | None = None
    media: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.position_ids is None:
            self.position_ids = (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def to(self, device: torch.device | str) -> TargetBatch:
        return TargetBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels, self.rows,
                                                     self.position_ids)),
                           {k: v.to(device) for k, v in self.media.items()})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class XBTSequence:
    """One ``[X|B|T]`` pass: ids, the boolean Condensation Mask ``(B, 1, L, L)``, positions, model kwargs and
    which columns are real tokens. ``X|B`` is left-padded (BToks last), ``T`` right-padded after it."""

    input_ids: torch.Tensor
    mask: torch.Tensor
    position_ids: torch.Tensor
    media: dict[str, torch.Tensor]
    valid: torch.Tensor
    input_width: int


@dataclass
class EncodeOutput:
    embeddings: torch.Tensor
    """Pooled vectors, L2-normalised when ``config.normalize``."""
    gen_loss: torch.Tensor | None = None
    """Mean target-token CE scaled by (rows with a target ÷ rows), per design §1."""
    gen_loss_sum: torch.Tensor | None = None
    """Unnormalised token-sum CE, for normalising over a whole batch split into GradCache chunks."""
    target_logits: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    """The raw pooled vectors (before normalisation)."""


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
        self.btok_rows: BTokRows | None = None
        self.btok_ids = self._add_btoks()
        self.target_prefix, self.target_suffix = self._target_wrapping()
        text_cfg = backbone.model.config.get_text_config()
        self.pooler = build_pooler(self.config, int(text_cfg.hidden_size))
        self.pooler.to(dtype=torch.float32)

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
        """Add ``<|btok_i|>`` tokens and initialise their rows per ``config.btok_init_mode``."""
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
        rows = model.get_input_embeddings().num_embeddings
        if self.config.btok_init_mode == "spare":
            # The authors' rule: unused rows are kept as they are; only a growing matrix is initialised (HF
            # mean-resizing, seeded so a reload rebuilds the same LM-head rows; input rows copy EOS).
            if len(tok) > rows:
                init = model.get_input_embeddings().weight[init_id].detach().clone()
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    model.resize_token_embeddings(len(tok))
                with torch.no_grad():
                    model.get_input_embeddings().weight[ids] = init
            return ids
        if max(ids) >= rows:
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
                   init: str | bool = "gaussian", autocast_adapter_dtype: bool = False,
                   target_modules: list[str] | None = None) -> None:
        """LoRA/DoRA (peft); the BTok embedding rows stay trainable as ``BTokRows`` (K x hidden, no
        vocabulary-sized copy or gradient). ``target_modules`` (module-name suffixes, peft's matching) overrides
        the backbone's default set (the LLM projections).

        Adapters are kept in the model's dtype: peft's default (``autocast_adapter_dtype=True``) upcasts them to
        fp32 on a bf16 model, which makes every adapter activation saved for backward fp32 (+45 % saved bytes
        per chunk at Qwen2-VL-2B's shape, docs/benchmarks.md). With ``dora`` and ``dropout > 0`` peft runs
        each base linear layer a second time on the dropped-out input (1.54x a step's FLOPs at that shape).
        """
        from peft import LoraConfig

        self._wrap_peft(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_dora=dora, init_lora_weights=init,
                                   target_modules=list(target_modules) if target_modules else
                                   self.backbone.lora_target_modules,
                                   modules_to_save=self.backbone.modules_to_save or None), autocast_adapter_dtype)

    def _wrap_peft(self, lora: Any, autocast_adapter_dtype: bool) -> None:
        from peft import get_peft_model

        self.peft_model = get_peft_model(self.backbone.model, lora, autocast_adapter_dtype=autocast_adapter_dtype)
        self.btok_rows = BTokRows(self.backbone.model, self.btok_ids) if self.btok_ids else None

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str,
                           rows: torch.Tensor | None = None) -> None:
        """Load a peft adapter state dict (keys from ``base_model.model.``) into the applied adapter, and the
        BTok rows: ``rows``, or peft trainable-token rows found in ``state`` (older saves, authors' runs); with
        neither, the rows stay the embedding's."""
        from peft import set_peft_model_state_dict

        peft_rows = pop_peft_rows(state, source)
        rows = rows if rows is not None else peft_rows
        if rows is not None:
            if self.btok_rows is None:
                raise ValueError(f"{source}: BTok rows saved, but the model has no BToks (num_btoks=0)")
            self.btok_rows.load(rows, source)
        result = set_peft_model_state_dict(self.peft_model, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ValueError(f"{source}: adapter weights with no place in the model: {unexpected[:5]}")

    def merge_adapters(self) -> None:
        """Fold the LoRA adapter and the BTok rows into the weights: same embeddings, plain HF model."""
        self.backbone.model = self.model = self.peft_model.merge_and_unload()
        self.peft_model = None
        if self.btok_rows is not None:
            self.btok_rows.merge()
            self.btok_rows = None

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

    def tokenize(self, sample: Sample) -> TokenRow:
        """One sample's ids with the BToks appended (``collate`` pads a list of them into ``ModelInputs``)."""
        return self.backbone.tokenize(sample, self.btok_ids, self.config.max_length)

    def collate(self, rows: list[TokenRow]) -> ModelInputs:
        return self.backbone.collate(rows)[0]

    def prepare_targets(self, targets: Sequence[str | Sample | None],
                        ids: list[str] | None = None) -> TargetBatch | None:
        """Wrap and tokenise GIC targets; ``None`` entries have no target. A ``Sample`` target is rendered
        like an input (its images included, never truncated); its media tokens get no loss, nor does the
        wrapping prefix. A text target is cut or rejected beyond ``target_max_length``."""
        bb = self.backbone
        prefix, suffix = bb.text_ids(self.target_prefix), bb.text_ids(self.target_suffix)
        room = self.config.target_max_length - len(prefix) - len(suffix)
        skip = bb.non_text_token_ids
        rows, token_rows, labels = [], [], []
        for i, target in enumerate(targets):
            if target is None:
                continue
            name = ids[i] if ids else i
            media: dict[str, torch.Tensor] = {}
            if isinstance(target, Sample):
                segments, media = bb.sample_segments(target)
                body = [t for s in segments for t in s.ids]
                kinds = [s.kind for s in segments for _ in s.ids]
                if not body:
                    raise ValueError(f"empty target sample for sample {name!r}")
            else:
                if not target.strip():
                    raise ValueError(f"empty target text for sample {name!r}")
                if room < 1:
                    raise ValueError(f"target_max_length={self.config.target_max_length} leaves no room for "
                                     f"text after the {len(prefix) + len(suffix)} wrapping tokens")
                body = bb.text_ids(target)
                if len(body) > room:
                    if not self.config.truncate_targets:
                        raise ValueError(
                            f"target of sample {name!r} has {len(body) + len(prefix) + len(suffix)} tokens > "
                            f"target_max_length={self.config.target_max_length} (set truncate_targets to cut)")
                    body = body[:room]
                kinds = [TEXT] * len(body)
            scored = [t if k == TEXT and t not in skip else -100 for t, k in zip(body, kinds, strict=True)]
            rows.append(i)
            token_rows.append(TokenRow(prefix + body + suffix, [TEXT] * len(prefix) + kinds + [TEXT] * len(suffix),
                                       media))
            labels.append([-100] * len(prefix) + scored + suffix)
        if not rows:
            return None
        batch, _ = bb.collate(token_rows, left_pad=False)
        lab = torch.full(batch.input_ids.shape, -100, dtype=torch.long)
        for r, y in enumerate(labels):
            lab[r, : len(y)] = torch.tensor(y)
        return TargetBatch(batch.input_ids, batch.attention_mask, lab, torch.tensor(rows, dtype=torch.long),
                           batch.position_ids, batch.media)

    # ---- forward ---------------------------------------------------------------------------------------------
    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw pooled vectors (``btoks.pooling``; normalisation is the caller's)."""
        return self.pooler(hidden, attention_mask)

    def _output(self, pooled: torch.Tensor, **kwargs: Any) -> EncodeOutput:
        emb = F.normalize(pooled, dim=-1) if self.config.normalize else pooled
        return EncodeOutput(emb, pooled=pooled, **kwargs)

    def forward(self, inputs: ModelInputs, targets: TargetBatch | None = None) -> EncodeOutput:
        """Embeddings for ``inputs``; with ``targets`` also the GIC loss (targets see only the BToks)."""
        if targets is None or self.config.num_btoks == 0:
            out = self.backbone.forward(inputs.input_ids, inputs.attention_mask, inputs.position_ids, inputs.media)
            return self._output(self.pool(out.last_hidden_state, inputs.attention_mask))
        if self.explicit_gic:
            return self._forward_explicit(inputs, targets)
        return self._forward_cached(inputs, targets)

    @property
    def explicit_gic(self) -> bool:
        """Whether GIC runs as one explicit ``[X|B|T]`` pass (``gic_impl="mask"``, or gradient checkpointing,
        under which HF drops the KV cache the fast path needs)."""
        return self.config.gic_impl == "mask" or (
            self.training and getattr(self.model, "is_activation_checkpointing", False))

    def target_positions(self, inputs: ModelInputs, rows: torch.Tensor, relative: torch.Tensor | int) -> torch.Tensor:
        """Absolute positions of targets continuing ``rows`` of ``inputs`` (``config.gic_positions`` rule);
        ``relative`` is the targets' own positions, or a width for plain text."""
        if isinstance(relative, int):
            relative = torch.arange(relative, device=inputs.input_ids.device)[None].expand(len(rows), -1)
        return self.backbone.target_position_ids(inputs, rows, relative, self.config.gic_positions)

    def _forward_cached(self, inputs: ModelInputs, targets: TargetBatch) -> EncodeOutput:
        """Fast path: encode ``[X|B]`` once, keep only the BToks' per-layer KV, run T as a continuation."""
        out = self.backbone.forward(inputs.input_ids, inputs.attention_mask, inputs.position_ids, inputs.media,
                                    use_cache=True)
        pooled = self.pool(out.last_hidden_state, inputs.attention_mask)
        rows = targets.rows
        cache, ctx_mask = self.btok_cache(inputs, out.cache, rows)
        assert targets.position_ids is not None
        t_out = self.backbone.forward(
            targets.input_ids, torch.cat([ctx_mask, targets.attention_mask], dim=1),
            self.target_positions(inputs, rows, targets.position_ids), targets.media, cache=cache, use_cache=True,
        )
        return self._with_gen_loss(pooled, self.backbone.lm_head(t_out.last_hidden_state), targets, len(inputs))

    def btok_cache(self, inputs: ModelInputs, cache: Any = None, rows: torch.Tensor | None = None,
                   kv_mode: str | None = None) -> tuple[DynamicCache, torch.Tensor]:
        """The context a GIC target sees: per layer only the last K (BTok) keys/values of ``rows`` (all of
        ``[X|B]`` with ``kv_mode="full"``), and its 2-D attention mask. Shared by training and ``btoks decode``.

        ``cache`` is the encode pass's KV cache; without it ``inputs`` are encoded here.
        """
        kv_mode = kv_mode or self.config.kv_mode
        if kv_mode not in ("compressed", "full"):
            raise ValueError(f"kv_mode must be 'compressed' or 'full', got {kv_mode!r}")
        if cache is None:
            cache = self.backbone.forward(inputs.input_ids, inputs.attention_mask, inputs.position_ids,
                                          inputs.media, use_cache=True).cache
        if rows is None:
            rows = torch.arange(len(inputs), device=inputs.input_ids.device)
        keep = self.config.num_btoks if kv_mode == "compressed" else inputs.input_ids.shape[1]
        kept = DynamicCache()
        for i, layer in enumerate(cache.layers):
            kept.update(layer.keys[rows, :, -keep:], layer.values[rows, :, -keep:], i)
        return kept, inputs.attention_mask[rows, -keep:]

    def build_sequence(self, inputs: ModelInputs, targets: TargetBatch, kv_mode: str | None = None) -> XBTSequence:
        """The one ``[X|B|T]`` sequence of the explicit-mask path (also what attention analysis runs): every
        row of ``inputs`` followed by its target (none: masked columns), with the Condensation Mask."""
        n, lxb = inputs.input_ids.shape
        width = targets.input_ids.shape[1]
        device = inputs.input_ids.device
        t_ids = torch.zeros((n, width), dtype=torch.long, device=device)
        t_mask = torch.zeros_like(t_ids)
        t_ids[targets.rows], t_mask[targets.rows] = targets.input_ids, targets.attention_mask
        assert targets.position_ids is not None
        relative = torch.arange(width, device=device).expand(*targets.position_ids.shape[:-2], n, width).clone()
        relative[..., targets.rows, :] = targets.position_ids
        positions = torch.cat([inputs.position_ids,
                               self.target_positions(inputs, torch.arange(n, device=device), relative)], dim=-1)
        mask = condensation_mask(inputs.attention_mask, self.config.num_btoks, t_mask, kv_mode or self.config.kv_mode)
        valid = torch.cat([inputs.attention_mask, t_mask], dim=1).bool()
        media = self.backbone.join_media(inputs, targets.media, targets.rows, width)
        return XBTSequence(torch.cat([inputs.input_ids, t_ids], dim=1), mask, positions, media, valid, lxb)

    def _forward_explicit(self, inputs: ModelInputs, targets: TargetBatch) -> EncodeOutput:
        """Reference path: one pass over ``[X|B|T]`` with the explicit Condensation Mask (masks.py)."""
        seq = self.build_sequence(inputs, targets)
        out = self.backbone.forward(seq.input_ids, to_additive(seq.mask, self.dtype), seq.position_ids, seq.media)
        hidden = out.last_hidden_state
        pooled = self.pool(hidden[:, :seq.input_width], inputs.attention_mask)
        return self._with_gen_loss(pooled, self.backbone.lm_head(hidden[targets.rows, seq.input_width:]), targets,
                                   len(inputs))

    def _with_gen_loss(self, pooled: torch.Tensor, logits: torch.Tensor, targets: TargetBatch, n: int) -> EncodeOutput:
        mean, total = generative_loss(logits, targets.labels, n)
        return self._output(pooled, gen_loss=mean, gen_loss_sum=total, target_logits=logits)

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
            if any(True for _ in self.pooler.parameters()):
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in self.pooler.state_dict().items()}, tmp / POOLER_FILE)
            if self.peft_model is not None:
                if not self.config.base_model:
                    raise ValueError("adapter-only saving needs config.base_model (a hub name or path)")
                # Only the K BTok rows are written; the rest of the resized embedding is the base model plus
                # EOS-initialised rows, rebuilt on load, so the full matrix is not written.
                self.peft_model.save_pretrained(tmp / ADAPTER_DIR, save_embedding_layers=False)
                if self.btok_rows is not None:
                    from safetensors.torch import save_file

                    save_file({"rows": self.btok_rows.weight.detach().contiguous(),
                               "ids": self.btok_rows.ids.cpu()}, tmp / ROWS_FILE)
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

    def _load_adapter(self, path: Path) -> None:
        """The adapter ``save_pretrained`` wrote (frozen, like peft's loading for inference); an adapter
        saved with peft's trainable tokens (btoks before ``BTokRows``) loads too."""
        from peft import LoraConfig
        from safetensors.torch import load_file

        lora = LoraConfig.from_pretrained(str(path / ADAPTER_DIR))
        if self.btok_ids and not (path / ROWS_FILE).is_file() and lora.trainable_token_indices is None:
            raise FileNotFoundError(f"{path / ROWS_FILE} not found: the trained rows of the "
                                    f"{len(self.btok_ids)} BToks")
        lora.trainable_token_indices = None  # older saves: their rows come from the adapter state below
        self._wrap_peft(lora, autocast_adapter_dtype=True)  # peft's from_pretrained default, as before
        rows = None
        if (path / ROWS_FILE).is_file():
            saved = load_file(path / ROWS_FILE)
            if saved["ids"].tolist() != self.btok_ids:
                raise ValueError(f"{path / ROWS_FILE}: BTok ids {saved['ids'].tolist()} differ from the "
                                 f"tokenizer's {self.btok_ids}")
            rows = saved["rows"]
        self.load_adapter_state(load_file(path / ADAPTER_DIR / "adapter_model.safetensors"), str(path), rows)
        if lora.inference_mode:
            self.peft_model.requires_grad_(False)
            if self.btok_rows is not None:
                self.btok_rows.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, merge: bool = False, base_model: str | None = None,
                        **load_kwargs: Any) -> BToksModel:
        """Load what ``save_pretrained`` wrote (the LoRA base is re-read from ``config.base_model``).

        ``merge=True`` folds a LoRA adapter and the BTok rows into the weights for inference: same
        embeddings, no adapter overhead per forward.
        A merged model saves in full. A run folder or ``checkpoint-N`` of the authors' code loads too
        (``btoks.convert``); ``base_model`` overrides where the backbone is read from.
        """
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            from btoks.convert import find_checkpoint, load_authors_checkpoint

            if find_checkpoint(path) is not None:  # a run of the authors' code (docs/parity.md)
                return load_authors_checkpoint(path, base_model=base_model, merge=merge, **load_kwargs).eval()
        config = BToksConfig.load(path)
        if base_model is not None:
            config.base_model = base_model
        if (path / ADAPTER_DIR).is_dir():
            model = cls(load_backbone(config.base_model, **load_kwargs), config)
            model._load_adapter(path)
            if merge:
                model.merge_adapters()
        else:
            model = cls(load_backbone(str(path / BACKBONE_DIR), **load_kwargs), config)
        if (path / POOLER_FILE).is_file():
            from safetensors.torch import load_file

            model.pooler.load_state_dict(load_file(path / POOLER_FILE))
        return model.eval()  # like transformers: loaded for inference (dropout off); train() to fine-tune
