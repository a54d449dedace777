"""Houlsby bottleneck adapters after attention and feed-forward (Houlsby et al. 2019),
from AdapterHub's `adapters` library (the `adapters` extra)."""

from peft_search.spaces.common import suggest_bottleneck
from peft_search.spaces.registry import register


@register(
    "double_seq_bn",
    peft_type="DOUBLE_SEQ_BN",
    quantization=("none", "int8"),
    quantization_why="4-bit bases fail in AdapterHub's wrapped bitsandbytes layers on CPU",
    description="Houlsby bottleneck adapters after attention and feed-forward",
    library="adapters",
    family="adapters",
)
def sample_double_seq_bn(trial, ctx):
    return suggest_bottleneck(trial, ctx, "double_seq_bn", "DOUBLE_SEQ_BN")
