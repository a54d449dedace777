"""Parallel bottleneck adapter beside each feed-forward (He et al. 2022),
from AdapterHub's `adapters` library (the `adapters` extra)."""

from peft_search.spaces.common import suggest_bottleneck
from peft_search.spaces.registry import register


@register(
    "par_bn",
    peft_type="PAR_BN",
    quantization=("none", "int8"),
    quantization_why="4-bit bases fail in AdapterHub's wrapped bitsandbytes layers on CPU",
    description="Parallel bottleneck adapter beside each feed-forward",
    library="adapters",
    family="adapters",
)
def sample_par_bn(trial, ctx):
    return suggest_bottleneck(trial, ctx, "par_bn", "PAR_BN")
