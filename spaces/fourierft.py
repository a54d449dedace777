"""FourierFT: learn a few spectral coefficients of the weight update (Gao et al. 2024)."""

from peft_search.spaces.common import base, suggest_layers, suggest_targets
from peft_search.spaces.registry import register


@register(
    "fourierft",
    peft_type="FOURIERFT",
    quantization=("none",),
    quantization_why="PEFT has no bitsandbytes variant of the FourierFT layer",
    description="Sparse spectral weight updates",
)
def sample_fourierft(trial, ctx):
    _, targets = suggest_targets(trial, ctx, "fourierft")
    return {
        **base(ctx, "FOURIERFT"),
        "n_frequency": int(trial.suggest_categorical("fourierft.n_frequency", [100, 500, 1000])),
        "scaling": float(trial.suggest_categorical("fourierft.scaling", [100.0, 150.0, 300.0])),
        "target_modules": targets,
        **suggest_layers(trial, ctx, "fourierft"),
    }
