"""What can be searched: one module per PEFT method family, each registering itself on import.

Pure: imports neither torch nor ray, so the CLI and the config loader stay fast.
"""

from peft_search.spaces import (  # noqa: F401  (imported for their registration side effect)
    adalora,
    bitfit,
    boft,
    compacter,
    double_seq_bn,
    fourierft,
    ia3,
    ln_tuning,
    loha,
    lokr,
    lora,
    oft,
    p_tuning,
    par_bn,
    prefix_tuning,
    prompt_tuning,
    seq_bn,
    vblora,
    vera,
)
from peft_search.spaces.registry import (
    LAYER_CHOICES,
    QUANTIZATION_LEVELS,
    TARGET_CHOICES,
    MethodSpace,
    SpaceContext,
    family_of,
    get_method,
    install_hint,
    method_for_peft_type,
    register,
    registered_methods,
)
from peft_search.spaces.sampling import (
    Candidate,
    Choice,
    DefineByRun,
    Domain,
    Range,
    SpaceSpec,
    describe_candidate,
    enqueue_candidates,
)
from peft_search.spaces.targets import resolve_target_sets

__all__ = [
    "LAYER_CHOICES",
    "QUANTIZATION_LEVELS",
    "Range",
    "TARGET_CHOICES",
    "Candidate",
    "Choice",
    "DefineByRun",
    "Domain",
    "MethodSpace",
    "SpaceContext",
    "SpaceSpec",
    "describe_candidate",
    "enqueue_candidates",
    "family_of",
    "get_method",
    "install_hint",
    "method_for_peft_type",
    "register",
    "registered_methods",
    "resolve_target_sets",
]
