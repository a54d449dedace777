"""Bias-only tuning (BitFit, Ben Zaken et al. 2022), through PEFT's BEFT: a trainable bias per linear layer."""

from peft_search.spaces.common import base, suggest_targets
from peft_search.spaces.registry import register


@register("bitfit", peft_type="BEFT", description="Bias terms only (PEFT's BEFT)")
def sample_bitfit(trial, ctx):
    _, targets = suggest_targets(trial, ctx, "bitfit")
    return {**base(ctx, "BEFT"), "target_modules": targets}
