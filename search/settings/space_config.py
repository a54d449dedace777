"""The ``space`` section of the config: what a search samples, and the explicit candidates it tries first."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from peft_search import spaces
from peft_search.search.settings.strict import Strict as _Strict

Quantization = Literal["none", "int8", "nf4", "fp4"]


class CandidateSpec(_Strict):
    name: str
    """A unique name; the trials table's ``candidate`` column."""
    peft_config: dict[str, Any]
    """Shaped like PEFT's ``adapter_config.json``: ``peft_type`` plus keyword arguments."""
    quantization: Quantization = "none"
    """The base model's quantization level for this candidate."""
    learning_rate: float | None = Field(None, gt=0)
    """Fixed learning rate; sampled from ``training.learning_rate`` when unset."""

    @field_validator("peft_config")
    @classmethod
    def _peft_type(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "peft_type" not in value:
            raise ValueError("needs a 'peft_type' key, e.g. peft_type: LORA")
        if not isinstance(value["peft_type"], str):
            raise ValueError(f"peft_type must be a name such as LORA (got {value['peft_type']!r})")
        return value


class SpaceConfig(_Strict):
    """Each list also takes a single value, which fixes that setting (``ranks: 8``, ``methods: lora``)."""

    methods: list[str] = Field(default_factory=lambda: ["lora", "ia3", "prompt_tuning", "bitfit"])
    """PEFT method families to sample (``spaces``' registry): lora, adalora, loha, lokr, vera, ia3,
    prefix_tuning, prompt_tuning, p_tuning, ln_tuning, bitfit, boft, oft, fourierft, vblora."""
    quantization: list[Quantization] = Field(default_factory=lambda: ["none"])
    """Base-model quantization levels to sample: ``none``, ``int8``, ``nf4``, ``fp4`` (bitsandbytes)."""
    targets: list[Literal["attention", "attention+mlp", "all-linear"]] = Field(
        default_factory=lambda: ["attention", "attention+mlp"]
    )
    """Named sets of layers to adapt, resolved against the model's own module names."""
    layers: list[Literal["all", "top-half", "every-other"]] = Field(default_factory=lambda: ["all"])
    """Which transformer blocks to adapt (PEFT's ``layers_to_transform``)."""
    ranks: list[int] = Field(default_factory=lambda: [4, 8, 16])
    """Ranks (``r``) to sample for the methods that have one; each at most the largest
    ``min(in, out)`` of the model's weight matrices (a higher one adds parameters and nothing else)."""
    alpha_ratios: list[float] = Field(default_factory=lambda: [1.0, 2.0])
    """``lora_alpha`` (or ``alpha``) as a multiple of the rank."""
    dropouts: list[float] = Field(default_factory=lambda: [0.0, 0.1])
    """Adapter dropouts to sample."""
    virtual_tokens: list[int] = Field(default_factory=lambda: [8, 16])
    """Soft-prompt lengths to sample (prompt, prefix and P-tuning)."""
    candidates: list[CandidateSpec] = Field(default_factory=list)
    """Explicit configs tried first, instead of or besides the sampled space."""

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        known = spaces.registered_methods()
        for name in value:
            hint = spaces.install_hint(name)
            if hint is not None:
                raise ValueError(hint)
            if name not in known:
                raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(known))}")
        return value

    @field_validator(
        "methods",
        "quantization",
        "targets",
        "layers",
        "ranks",
        "alpha_ratios",
        "dropouts",
        "virtual_tokens",
        mode="before",
    )
    @classmethod
    def _one_value(cls, value: Any) -> Any:
        """A single value fixes the setting: ``ranks: 8`` is ``ranks: [8]``."""
        return [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value

    @field_validator(
        "quantization", "targets", "layers", "ranks", "alpha_ratios", "dropouts", "virtual_tokens"
    )
    @classmethod
    def _non_empty(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("must list at least one value")
        return value

    @field_validator("ranks", "virtual_tokens")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("values must be >= 1")
        return value

    @field_validator("alpha_ratios")
    @classmethod
    def _positive_ratio(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError(f"values must be > 0, got {value}")
        return value

    @field_validator("dropouts")
    @classmethod
    def _probability(cls, value: list[float]) -> list[float]:
        if any(not 0 <= v < 1 for v in value):
            raise ValueError(f"each value needs 0 <= dropout < 1, got {value}")
        return value

    @field_validator("candidates")
    @classmethod
    def _unique_names(cls, value: list[CandidateSpec]) -> list[CandidateSpec]:
        names = [c.name for c in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"candidate names must be unique; {twice} used more than once")
        return value

    @model_validator(mode="after")
    def _something_to_search(self) -> SpaceConfig:
        if not self.methods and not self.candidates:
            raise ValueError("list at least one method under space.methods or one space.candidates entry")
        feasible = [m for m in self.methods if spaces.get_method(m).quantization & set(self.quantization)]
        if self.methods and not feasible and not self.candidates:
            raise ValueError(
                f"no listed method can train at quantization {self.quantization}; add 'none' to space.quantization"
            )
        return self
