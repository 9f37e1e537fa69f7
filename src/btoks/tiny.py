"""Moved to :mod:`btoks.backbones.tiny` (backbone names resolve inside ``btoks.backbones``); this alias keeps
older imports working."""

from btoks.backbones.tiny import SPECIAL_TOKENS, tiny_backbone, tiny_tokenizer

__all__ = ["SPECIAL_TOKENS", "tiny_backbone", "tiny_tokenizer"]
