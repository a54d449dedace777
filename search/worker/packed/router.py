"""Each row of a packed batch through its own member's adapter (``AdapterRouter``)."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterator

import torch


class _BaseRows(list):
    """``adapter_names`` that send every row through the base layer alone (PEFT's ``__base__``): the router adds each
    run of rows' own adapter output after."""


class AdapterRouter:
    """Sends each row of a batch through its own member's adapter. ``names`` is a name per row, or one name for all;
    it stays set through the backward pass (gradient checkpointing runs the forward again there).

    A packed batch holds each member's rows one after the other. A LoRA linear layer (plain, 8-bit or 4-bit) computes
    its base output once for the whole batch, and each run of rows gets its own adapter's output added to its slice
    (split and concatenated: views, and one copy of the output). PEFT's mixed-adapter-batch forward, built for
    inference, gathers and scatters each adapter's rows by index instead; in training each gather's backward fills a
    zeroed gradient the size of the layer's whole input, per adapter and layer (4 adapters on every linear layer of
    MiniLM: a packed step cost 2.7x the four steps alone on 2 CPU cores). Other adapted layers (a classification head
    in ``modules_to_save``, LoRA on embeddings, LoRA variants) go through PEFT's mixed-batch forward, by the
    ``adapter_names`` it takes (PEFT allows it at inference only; the forward is differentiable, so it trains too)."""

    def __init__(self, model) -> None:
        self._names: str | list[str] | None = None
        self._runs: list[tuple[str, int]] = []
        self._handles: list = []
        self._routed: set[int] = set()
        self._mixed: set[int] = set()
        self.attach(model)

    @property
    def names(self) -> str | list[str] | None:
        return self._names

    @names.setter
    def names(self, names: str | list[str] | None) -> None:
        self._names = names
        runs = [] if names is None or isinstance(names, str) else itertools.groupby(names)
        self._runs = [(name, len(list(rows))) for name, rows in runs]

    def attach(self, model) -> None:
        """Hooks on the model's adapter layers not hooked yet (a member joining may add layers: other targets)."""
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        routed = [
            m
            for m in model.modules()
            if isinstance(m, (LoraLayer, AuxiliaryTrainingWrapper)) and id(m) not in self._routed
        ]
        self._routed |= {id(m) for m in routed}
        for module in routed:
            self._handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
            if not _splits(module):
                continue
            self._handles.append(module.register_forward_hook(self._add_adapters, with_kwargs=True))
            if type(module.base_layer).__module__.startswith("bitsandbytes"):
                # PEFT's mixed-batch forward adds each adapter's output into the base layer's output in place; a
                # bitsandbytes layer's output is a view made inside its autograd Function, which autograd refuses
                # to see changed in place (PEFT's own single-adapter 4-bit forward clones it too): give it a copy.
                copy = functools.partial(self._copy_for_mixed, id(module))
                self._handles.append(module.base_layer.register_forward_hook(copy))

    def _before(self, module, args, kwargs):
        self._mixed.discard(id(module))
        if self._names is None:
            return args, kwargs
        rows = (args[0] if args else next(iter(kwargs.values()))).shape[0]
        runs = self._runs_of(rows)
        if runs is not None and _splits(module) and not any(n in module.lora_variant for n, _ in runs):
            return args, {**kwargs, "adapter_names": _BaseRows(["__base__"] * rows)}
        self._mixed.add(id(module))
        names = [self._names] * rows if isinstance(self._names, str) else self._names
        return args, {**kwargs, "adapter_names": names}

    def _runs_of(self, rows: int) -> list[tuple[str, int]] | None:
        if isinstance(self._names, str):
            return [(self._names, rows)]
        return self._runs if sum(n for _, n in self._runs) == rows else None

    def _add_adapters(self, module, args, kwargs, output):
        """Each run of rows' own adapter output added to its slice of the base layer's (as PEFT's LoRA forward adds
        its active adapter's alone)."""
        if not isinstance(kwargs.get("adapter_names"), _BaseRows):
            return None
        x = args[0] if args else kwargs["x"]
        runs = self._runs_of(x.shape[0])
        sizes = [n for _, n in runs]
        one = len(runs) == 1
        outs = []
        for (name, _), rows, base in zip(
            runs, [x] if one else x.split(sizes), [output] if one else output.split(sizes), strict=True
        ):
            if name not in module.lora_A:  # the member does not adapt this layer (other targets)
                outs.append(base)
                continue
            lora_a, lora_b = module.lora_A[name], module.lora_B[name]
            dropped = module.lora_dropout[name](rows.to(lora_a.weight.dtype))
            delta = lora_b(lora_a(dropped)) * module.scaling[name]
            outs.append(base + delta.to(output.dtype))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _copy_for_mixed(self, lora_layer: int, module, args, output):
        return output.clone() if lora_layer in self._mixed else None

    @contextlib.contextmanager
    def only(self, name: str) -> Iterator[None]:
        """Every row through one member's adapter (its evaluations)."""
        before, self.names = self._names, name
        try:
            yield
        finally:
            self.names = before

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _splits(module) -> bool:
    """A LoRA linear layer (plain, 8-bit or 4-bit): the router splits its batch by run."""
    return isinstance(module, _split_types())


@functools.cache
def _split_types() -> tuple[type, ...]:
    from peft.tuners.lora import Linear

    try:
        from peft.tuners.lora.bnb import Linear4bit, Linear8bitLt
    except ImportError:  # no bitsandbytes here
        return (Linear,)
    return (Linear, Linear8bitLt, Linear4bit)
