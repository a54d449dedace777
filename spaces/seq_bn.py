"""Pfeiffer bottleneck adapter after each block's feed-forward (Pfeiffer et al. 2021),
from AdapterHub's `adapters` library (the `adapters` extra)."""

from peft_search.spaces.common import suggest_bottleneck
from peft_search.spaces.registry import register


@register(
    "seq_bn",
    peft_type="SEQ_BN",
    quantization=("none", "int8"),
    quantization_why="4-bit bases fail in AdapterHub's wrapped bitsandbytes layers on CPU",
    description="Pfeiffer bottleneck adapter after each block's feed-forward",
    library="adapters",
    family="adapters",
)
def sample_seq_bn(trial, ctx):
    return suggest_bottleneck(trial, ctx, "seq_bn", "SEQ_BN")
