"""Any Hugging Face causal LM (Llama, Qwen2/3, SmolLM, Mistral, ...): text-only inputs."""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from btoks.backbones.base import Backbone


class CausalLMBackbone(Backbone):
    """The fallback adapter: anything ``AutoModelForCausalLM`` loads."""

    family = "causal_lm"

    @classmethod
    def matches(cls, config: Any) -> bool:
        return any(a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))

    @classmethod
    def load(cls, name_or_path: str, *, dtype: Any = None, trust_remote_code: bool = False,
             attn_implementation: str | None = "sdpa", **kwargs: Any) -> CausalLMBackbone:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation, **kwargs,
        )
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer)
