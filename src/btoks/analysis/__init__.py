"""Evidence tools: attention flow with and without the Condensation Mask, BTok decoding, matched ablations.

* :func:`btoks.analysis.attention.analyze_attention` — ``btoks analyze attention``
* :func:`btoks.analysis.decode.decode_btoks` — ``btoks decode``
* :func:`btoks.analysis.ablate.ablate` — ``btoks ablate`` (import it from the module)
"""

from btoks.analysis.attention import analyze_attention, attention_shares, write_attention_report
from btoks.analysis.common import load_gic_samples
from btoks.analysis.decode import decode_btoks

__all__ = ["analyze_attention", "attention_shares", "decode_btoks", "load_gic_samples",
           "write_attention_report"]
