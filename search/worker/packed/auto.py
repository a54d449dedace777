"""``search.packing: auto``: before the search, whether packing pays on the workers' device and at which group size,
measured there (``measure_packing``: a packed step of K LoRA adapters against each adapter's step alone) and cached
per device, model and step shape."""

from __future__ import annotations

import dataclasses
import json
import time

import torch

from peft_search.search.inputs.candidates import measuring_lora
from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.plan.baseline import RuntimeBaseline, read_cache, write_cache
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.worker.environment import import_training_libraries, quiet_libraries
from peft_search.search.worker.memory import release_accelerator_memory
from peft_search.search.worker.packed.group import add_adapter, load_group
from peft_search.search.worker.packed.plan import AUTO_DOUBLINGS, PACKING_GROWS, PACKING_PAYS, packing_size
from peft_search.search.worker.packed.router import AdapterRouter
from peft_search.search.worker.packed.trainer import ROUTE, Member, PackedCollator, member_loss
from peft_search.search.worker.placement import worker_resources
from peft_search.search.worker.steps import trial_device

SPEEDUP_CACHE = "packing-speedup.json"
"""The cache file (``search.plan.baseline.cache_file``) of ``decide_packing``'s figures."""


def decide_packing(
    settings: TrialSettings, data: TokenizedSplits, quantization: str, echo: bool = True
) -> TrialSettings:
    """``search.packing: auto``, before the search: measure on a worker (a Ray task with a worker's resources) how
    much cheaper a row trains packed than alone, for groups of ``settings.packing`` LoRA adapters and, where that
    pays, larger ones (``measure_packing``, at this quantization level), and return the
    settings that pack at the size ``packing_size`` takes (1, each trial alone, where the smallest does not reach
    ``PACKING_PAYS``, or the measurement fails: the search goes on). The figures are cached per device, model and
    step shape (``PEFT_SEARCH_CACHE``), so a machine measures a search's kind once."""
    import ray

    resources = worker_resources(settings)
    task = ray.remote(_measure_packing).options(
        num_cpus=resources.get("CPU", 0), num_gpus=resources.get("GPU", 0), max_retries=0
    )
    started = time.monotonic()
    try:
        speedups, device, cached = ray.get(task.remote(settings, data, quantization))
    except Exception as err:  # noqa: BLE001 - whatever stopped the measurement, the search goes on unpacked
        if echo:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            print(
                f"[peft-search] packing (auto): not measured ({reason[:300]}): LoRA-family trials train each alone "
                "(as with off)",
                flush=True,
            )
        return dataclasses.replace(settings, packing=1)
    took = time.monotonic() - started
    members = packing_size(speedups)
    if echo:
        how = f"up to {members} a group" if members > 1 else "each alone (as with off)"
        where = "cached" if cached else f"measured in {took:.0f} s"
        sizes = sorted(speedups)
        figures = ", ".join(
            f"{speedups[k]:.2f}x" + (f" ({k} LoRA adapters a step)" if k == sizes[0] else f" ({k})")
            for k in sizes
        )
        print(
            f"[peft-search] packing (auto): a row trains {figures} as fast packed as alone on {device} ({where};"
            f" packs from {PACKING_PAYS:g}x, larger groups where {PACKING_GROWS:g}x faster again): LoRA-family"
            f" trials train {how}",
            flush=True,
        )
    # The figure of the size it packs at; unpacked, of the smallest measured (the one that did not pay).
    speedup = speedups[members] if members > 1 else speedups[min(speedups)]
    return dataclasses.replace(settings, packing=members, packing_speedup=speedup)


def _measure_packing(
    settings: TrialSettings, data: TokenizedSplits, quantization: str
) -> tuple[dict[int, float], str, bool]:
    """``decide_packing``'s task: the speedups by group size (read from the cache, else measured and cached), the
    device's name and whether they were cached."""
    quiet_libraries()
    device = trial_device(settings)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    t = settings.training
    key = json.dumps(
        [
            RuntimeBaseline.environment_key(),
            name,
            settings.model_path,
            settings.revision,
            settings.task,
            quantization,
            t.precision,
            settings.micro_batch_size(),
            t.max_seq_length,
            settings.packing,
            AUTO_DOUBLINGS,
        ]
    )
    cached = read_cache(SPEEDUP_CACHE).get(key)
    if isinstance(cached, dict) and cached:  # JSON keys are text
        return {int(k): float(v) for k, v in cached.items()}, name, True
    speedups = measure_packing(settings, data, quantization, device=device)
    write_cache(SPEEDUP_CACHE, key, speedups)
    return speedups, name, False


def packing_speedup(
    model,
    router: AdapterRouter,
    members: list[Member],
    data: TokenizedSplits,
    settings: TrialSettings,
    device: torch.device,
) -> float:
    """How much cheaper a training row is packed than alone on this device: the seconds of each member's own
    forward and backward on the first training micro-batch (PEFT's plain forward, its adapter active), summed,
    over the seconds of one packed step of them all. After an untimed pass (allocators and kernels warm up), each
    is timed twice, in both orders, and the fastest counts (another process's burst only slows a pass down). No
    weight changes and the random state is put back."""
    rows = [data.train[i] for i in range(min(len(data.train), settings.micro_batch_size()))]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    model.train()

    def step(group: list[Member]) -> float:
        batch = PackedCollator(group, data.pad_token_id)(rows)
        route = batch.pop(ROUTE).tolist()
        labels = batch.pop("labels").to(device)
        inputs = {k: v.to(device) for k, v in batch.items()}
        if len(group) == 1:
            model.set_adapter(group[0].name)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        router.names = [group[i].name for i in route] if len(group) > 1 else None
        try:  # routed through the backward pass too (gradient checkpointing runs the forward there)
            logits = model(**inputs).logits
            index = torch.tensor(route, device=device)
            loss = sum(member_loss(logits[index == i], labels[index == i], settings.task) for i in set(route))
            loss.backward()
        finally:
            router.names = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t
        model.zero_grad(set_to_none=True)
        return seconds

    try:
        times: dict[str, list[float]] = {"packed": [], "alone": []}
        for rep in range(3):  # a pass to warm up, then two timed, in both orders; the fastest of each counts
            first, second = ("packed", "alone") if rep % 2 == 0 else ("alone", "packed")
            for arm in (first, second):
                seconds = step(members) if arm == "packed" else sum(step([m]) for m in members)
                if rep:
                    times[arm].append(seconds)
        packed, alone = min(times["packed"]), min(times["alone"])
    finally:
        model.base_model.set_requires_grad([m.name for m in members], True)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return alone / packed if packed > 0 else 0.0


def measure_packing(
    settings: TrialSettings, data: TokenizedSplits, quantization: str, *, device: torch.device
) -> dict[int, float]:
    """``packing_speedup`` on this device for groups of LoRA adapters (r 8 on every linear layer, the search's
    micro-batch and sequence length) on the base model at this quantization level, by group size: how much cheaper a
    training row is packed than alone. It measures ``settings.packing`` adapters, then twice as many, up to
    ``AUTO_DOUBLINGS`` times, while ``packing_size`` takes the last size measured (a larger group may still pay
    more) and the larger group fits the device's memory. What an adapter adds to a step is small beside its base
    model's forward and backward, so one representative stands for the search's LoRA trials."""
    import_training_libraries(quantization)
    lora = measuring_lora(settings.task)
    trial = TrialConfig("lora", quantization, lora, 1e-4)

    def member(i: int) -> Member:
        return Member(f"m{i}", trial, f"member_{i}", 1e-4, 0.0, 1.0)

    members = [member(i) for i in range(settings.packing)]
    torch.manual_seed(settings.seed)
    model, refused, init_rng = load_group(members, settings, data, device)
    if refused:
        raise ValueError(f"PEFT refused the measuring adapter: {refused[0].error}")
    router = AdapterRouter(model)
    speedups: dict[int, float] = {}
    try:
        for doubling in range(AUTO_DOUBLINGS + 1):
            size = settings.packing * 2**doubling
            if speedups and packing_size(speedups) != max(speedups):
                break
            while len(members) < size:
                members.append(member(len(members)))
                add_adapter(model, members[-1], init_rng, [m.name for m in members[:-1]])
            try:
                speedups[size] = packing_speedup(model, router, members, data, settings, device)
            except torch.OutOfMemoryError:
                if not speedups:
                    raise
                break  # the larger group does not fit: the sizes measured stand
        return speedups
    finally:
        router.remove()
        model = None
        release_accelerator_memory()


__all__ = ["SPEEDUP_CACHE", "decide_packing", "measure_packing", "packing_speedup"]
