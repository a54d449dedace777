"""Which adapters can train in a packed group (``search.packing``): the LoRA family, through PEFT's mixed-adapter
batches, on a base model it leaves as it is. Pure: reads PEFT-shaped config dicts only."""

from __future__ import annotations

from typing import Any

SHARED_INIT = (True, False, "gaussian")
"""LoRA initialisations that leave the base weights as they are (PiSSA, OLoRA, LoftQ, EVA and CorDA change them,
so such an adapter cannot share its base model)."""


def packing_refusal(peft_config: dict[str, Any]) -> str | None:
    """Why this adapter cannot train in a packed group (None when it can): the LoRA family, through PEFT's
    mixed-adapter batches, on a base model it leaves as it is."""
    if str(peft_config.get("peft_type", "")).upper() != "LORA":
        return f"{peft_config.get('peft_type')} has no mixed-adapter batches in PEFT (the LoRA family has)"
    if peft_config.get("use_dora"):
        return "DoRA: PEFT refuses mixed-adapter batches with DoRA"
    if peft_config.get("init_lora_weights", True) not in SHARED_INIT:
        return f"init_lora_weights={peft_config['init_lora_weights']!r} changes the base weights"
    for key in ("layer_replication", "alora_invocation_tokens", "megatron_config"):
        if peft_config.get(key):
            return f"{key} is set"
    return None


__all__ = ["SHARED_INIT", "packing_refusal"]
