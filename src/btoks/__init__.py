"""btoks: Bottleneck Tokens turn decoder-only (multimodal) LLMs into universal embedding models."""

from btoks.config import BToksConfig
from btoks.data.sample import Sample
from btoks.loading import load
from btoks.model import BToksModel

__all__ = ["BToksConfig", "BToksModel", "Sample", "load"]
__version__ = "0.1.0"
