"""Compacter: bottleneck adapters with Kronecker-product (PHM) weights (Karimi Mahabadi et al. 2021), from AdapterHub's
`adapters` library (the `adapters` extra)."""

from peft_search.spaces.common import suggest_bottleneck
from peft_search.spaces.registry import register

PHM_DIMS = (4, 8)


@register(
    "compacter",
    peft_type="COMPACTER",
    quantization=("none", "int8"),
    quantization_why="4-bit bases fail in AdapterHub's wrapped bitsandbytes layers on CPU",
    description="Bottleneck adapters with shared Kronecker-product weights",
    library="adapters",
    family="adapters",
)
def sample_compacter(trial, ctx):
    return {
        **suggest_bottleneck(trial, ctx, "compacter", "COMPACTER"),
        "phm_dim": int(trial.suggest_categorical("compacter.phm_dim", list(PHM_DIMS))),
    }
