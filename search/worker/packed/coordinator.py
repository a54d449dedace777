"""Packed trials in a search (``search.packing``): trials that can share a base model meet in a group and train
together (``search.worker.packed.group.run_group``), each still its own Tune trial and its own Optuna trial.

A search that packs runs one ``PackCoordinator`` actor. A packable trial's Tune function (``train_packed``) holds
next to nothing (``PackedResources``) and joins the coordinator under its ``pack_key``. The first member of a group
starts its Ray task (``_train_group``: one worker's resources), which waits in Ray's queue for them; members join
until the task runs and claims them, so a group fills while the device is busy. It takes at most
``settings.packing`` members, none that would take its planned peak over ``budget.max_memory``
(``group_peak_bytes``), and once running waits up to ``GATHER_S`` seconds after the last one joined for more.
With ``search.packing: auto`` the search first measures whether packing pays on the workers' device, and at which
group size (``search.worker.packed.auto``); where it does not, every trial trains alone, as with ``off``.

A member's rung results travel back to its own Tune function, which reports them to Tune as a trial alone does; the
scheduler's answer (the report returns, or Tune ends the trial there) travels back to the group, which drops a
stopped member from its next step. Each member's final result, its adapter stored where a trial alone stores it,
is reported by its own trial as soon as it is done, with the group's name (``GROUP_KEY``) beside its metrics. The
Tune trial slot a stopped or finished member frees goes to a new trial, which joins the running group of its kind
that has room (``take``: it trains from the step it joins, as it would alone), else forms the next group; a group
ends once it has no member left (``retire``: a trial routed to it that it did not take forms the next group).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from peft_search.search.errors import InfeasibleTrialError
from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.results.records import ERROR_KEY, STATUS_KEY
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.worker.costs import plan_trial
from peft_search.search.worker.environment import quiet_libraries, return_freed_memory
from peft_search.search.worker.packed.group import pack_key, run_group
from peft_search.search.worker.packed.plan import group_peak_bytes, packing_refusal
from peft_search.search.worker.placement import worker_resources
from peft_search.search.worker.steps import stored_result, trial_device

GROUP_KEY = "group"
"""In a packed trial's results: the name of the group it trained in."""
GATHER_S = 15.0
"""Seconds a group whose task has its resources waits for one more member before it trains with the ones it has
(trial actors start a few seconds apart: each imports torch first)."""
POLL_S = 5.0
"""Seconds a member's wait for its next message lasts; each wait tells the coordinator the member is alive."""
LOST_S = 120.0
"""A member not heard from for this long while its group waits on it is taken as stopped (its actor died)."""


def coordinator_name(settings: TrialSettings) -> str:
    """The coordinator's Ray actor name: one per search (its name and where it keeps adapters: two searches of one
    name in other results directories may share a cluster)."""
    where = hashlib.sha256(settings.adapters_path.encode()).hexdigest()[:12]
    return f"peft-search-packing:{settings.config.name}:{where}"


def packs(trial: TrialConfig, settings: TrialSettings) -> bool:
    """Whether this trial trains in a packed group in this search."""
    return settings.packing > 1 and packing_refusal(trial.peft_config) is None


@dataclass(frozen=True)
class PackedResources:
    """Tune's resource request per trial (``tune.with_resources``): a packable trial's own function holds next to
    nothing (its group's task holds the worker's resources); any other trial holds the worker's, as without
    packing."""

    settings: TrialSettings
    worker: dict[str, float]

    def __call__(self, config: dict[str, Any]):
        from ray.tune import PlacementGroupFactory

        if packs(TrialConfig.from_mapping(config), self.settings):
            return PlacementGroupFactory([{"CPU": 0, "memory": 64 * 1024**2}])
        return PlacementGroupFactory([self.worker])


def train_packed(
    trial: TrialConfig, settings: TrialSettings, data: TokenizedSplits, trial_id: str
) -> dict[str, Any]:
    """A packable trial's Tune function: join a group, relay its rung results to Tune and Tune's answers back, and
    return its final result (raises ``InfeasibleTrialError`` for an infeasible member, as a trial alone would)."""
    import ray
    import ray.tune

    coordinator = ray.get_actor(coordinator_name(settings))
    ray.get(coordinator.join.remote(trial_id, trial, _plan(trial, settings, data.num_labels)))
    while True:
        message = ray.get(coordinator.next.remote(trial_id, POLL_S))
        if message is None:
            continue
        kind, payload = message
        if kind == "rung":
            try:
                ray.tune.report(payload)  # blocks until Tune has it; the scheduler may end the trial here
            except BaseException:
                coordinator.answer.remote(trial_id, False)
                raise
            coordinator.answer.remote(trial_id, True)
        elif kind == "result":
            return payload
        elif kind == "infeasible":
            raise InfeasibleTrialError(payload)
        else:
            raise RuntimeError(payload)


def _plan(trial: TrialConfig, settings: TrialSettings, num_labels: int):
    """The member's plan, for the group's memory budget (None without a budget: nothing to check)."""
    if not settings.budget.max_memory:
        return None
    try:
        return plan_trial(trial, settings, num_labels, runtime_bytes=0, device="cpu")
    except InfeasibleTrialError:
        return None  # the group's own check says why, as the trial's result


def start_coordinator(settings: TrialSettings, data: TokenizedSplits, gather_s: float = GATHER_S):
    """The search's ``PackCoordinator`` actor (on this node: it holds no resources and does no work); it ends with
    the driver's Ray job."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    actor = ray.remote(PackCoordinator).options(
        name=coordinator_name(settings), num_cpus=0, max_concurrency=1000, scheduling_strategy=here
    )
    return actor.remote(settings, [ray.put(data)], gather_s)


@dataclass
class _Forming:
    name: str
    key: str
    members: list[tuple[str, TrialConfig]] = field(default_factory=list)
    plans: list[Any] = field(default_factory=list)
    last_join: float = 0.0
    closed: bool = False
    running: bool = False
    """Training: it takes new members into free slots (``take``) until it retires."""
    live: list[str] = field(default_factory=list)
    """Its members training, as it last said (``take``)."""
    queue: list[tuple[str, TrialConfig]] = field(default_factory=list)
    """Members routed to it while it trains, not taken yet."""


class PackCoordinator:
    """The search's packed groups (a threaded Ray actor: members and groups block in its methods).

    A group's task is started with its first member and waits in Ray's queue for a worker's resources; members keep
    joining until it runs and claims them (``claim``), so a group fills while the device is busy with others.
    """

    def __init__(self, settings: TrialSettings, data: list, gather_s: float = GATHER_S) -> None:
        self._settings = settings
        self._data = data[0]  # an ObjectRef, kept unresolved (inside a list) so the actor holds no copy
        self._gather_s = gather_s
        self._lock = threading.Condition()
        self._forming: dict[str, _Forming] = {}  # by pack_key: the group still taking members
        self._groups: dict[str, _Forming] = {}  # by name: every group started
        self._inbox: dict[str, deque] = {}
        self._answers: dict[str, bool] = {}
        self._seen: dict[str, float] = {}
        self._plans: dict[str, Any] = {}
        self._names = (f"g{n}" for n in itertools.count())

    def join(self, trial_id: str, trial: TrialConfig, plan: Any = None) -> None:
        with self._lock:
            self._inbox.setdefault(trial_id, deque())
            self._seen[trial_id] = time.monotonic()
            self._plans[trial_id] = plan
            self._route(trial_id, trial)
            self._lock.notify_all()

    def _route(self, trial_id: str, trial: TrialConfig) -> None:
        """Into a running group of its kind with a free slot, else the group forming (a new one if none fits)."""
        key, plan = pack_key(trial, self._settings), self._plans.get(trial_id)
        for group in self._groups.values():
            if group.running and group.key == key and self._has_room(group, plan):
                group.queue.append((trial_id, trial))
                group.members.append((trial_id, trial))
                return
        forming = self._forming.get(key)
        if forming is not None and not self._fits(forming.plans, plan):
            self._close(forming)
            forming = None
        if forming is None:
            forming = self._forming[key] = _Forming(next(self._names), key)
            self._start(forming)
        forming.members.append((trial_id, trial))
        forming.plans.append(plan)
        forming.last_join = time.monotonic()
        if len(forming.members) >= self._settings.packing:
            self._close(forming)

    def _has_room(self, group: _Forming, plan: Any) -> bool:
        taking = [*group.live, *(t for t, _ in group.queue)]
        if len(taking) >= self._settings.packing:
            return False
        return self._fits([self._plans.get(t) for t in taking], plan)

    def take(self, name: str, live: list[str]) -> list[tuple[str, TrialConfig]]:
        """A running group's new members: those routed to it since it last asked (``live``: its members training
        now; its free slots are the search's size less those)."""
        with self._lock:
            group = self._groups[name]
            taken, group.queue = group.queue, []
            group.live = [*live, *(t for t, _ in taken)]
            return taken

    def retire(self, name: str) -> None:
        """A group has no member left and ends: trials routed to it that it did not take join another group."""
        with self._lock:
            self._pass_on(self._groups[name])
            self._lock.notify_all()

    def _pass_on(self, group: _Forming) -> None:
        """A group that no longer trains takes no one: those routed to it, not taken yet, go to another group."""
        group.running, left, group.queue = False, group.queue, []
        group.members = [m for m in group.members if m not in left]
        for trial_id, trial in left:
            self._route(trial_id, trial)

    def claim(self, name: str) -> list[tuple[str, TrialConfig]]:
        """The group's members, once its task runs: it takes whoever joined by then, waiting until it is full or
        ``gather_s`` has passed since the last one joined."""
        with self._lock:
            forming = self._groups[name]
            while not forming.closed:
                left = self._gather_s - (time.monotonic() - forming.last_join)
                if left <= 0:
                    self._close(forming)
                    break
                self._lock.wait(timeout=left)
            forming.running, forming.live = True, [t for t, _ in forming.members]
            return list(forming.members)

    def next(self, trial_id: str, timeout: float) -> tuple[str, Any] | None:
        """The member's next message (``rung``, ``result``, ``infeasible``, ``error``), or None after ``timeout``."""
        with self._lock:
            self._seen[trial_id] = time.monotonic()
            inbox = self._inbox.setdefault(trial_id, deque())
            self._lock.wait_for(lambda: bool(inbox), timeout=timeout)
            self._seen[trial_id] = time.monotonic()
            return inbox.popleft() if inbox else None

    def answer(self, trial_id: str, keep: bool) -> None:
        with self._lock:
            self._answers[trial_id] = keep
            self._lock.notify_all()

    def post(self, trial_id: str, message: tuple[str, Any]) -> None:
        with self._lock:
            self._inbox.setdefault(trial_id, deque()).append(message)
            self._lock.notify_all()

    def rung(self, trial_id: str, result: dict[str, Any]) -> bool:
        """A member's rung result to its trial; whether the search keeps it (False: stopped there, or gone)."""
        with self._lock:
            self._answers.pop(trial_id, None)
            self._inbox.setdefault(trial_id, deque()).append(("rung", result))
            self._lock.notify_all()
            while trial_id not in self._answers:
                if time.monotonic() - self._seen.get(trial_id, 0.0) > LOST_S:
                    return False
                self._lock.wait(timeout=POLL_S)
            return self._answers.pop(trial_id)

    def groups(self) -> dict[str, list[str]]:
        """Each group started so far and its members' trial ids (tests, and a search's own account)."""
        with self._lock:
            return {name: [t for t, _ in g.members] for name, g in self._groups.items()}

    def _fits(self, plans: list[Any], plan: Any) -> bool:
        budget = self._settings.budget.max_memory
        plans = [*plans, plan]
        if not budget or any(p is None for p in plans):
            return True
        return group_peak_bytes(plans) <= budget

    def _close(self, forming: _Forming) -> None:
        forming.closed = True
        if self._forming.get(forming.key) is forming:
            del self._forming[forming.key]
        self._lock.notify_all()

    def _start(self, forming: _Forming) -> None:
        import ray

        resources = worker_resources(self._settings)
        task = _group_task().options(
            num_cpus=resources.get("CPU", 0), num_gpus=resources.get("GPU", 0), max_retries=0
        )
        me = ray.get_runtime_context().current_actor
        ref = task.remote(me, forming.name, self._settings, self._data)
        self._groups[forming.name] = forming
        threading.Thread(target=self._watch, args=(ref, forming), daemon=True).start()

    def _watch(self, ref, forming: _Forming) -> None:
        """A group whose task died (its process killed, out of memory) fails its members' trials, saying why."""
        import ray

        try:
            ray.get(ref)
        except Exception as err:  # noqa: BLE001 - any failure of the task is each member's failure
            reason = f"packed group {forming.name} failed: {type(err).__name__}: {str(err).splitlines()[0]}"
            with self._lock:
                self._close(forming)  # no one joins a group that died before it claimed its members
                self._pass_on(forming)  # nor one that died training
                members = list(forming.members)
            for trial_id, _ in members:
                self.post(trial_id, ("error", reason))


def _train_group(coordinator, name: str, settings: TrialSettings, data) -> None:
    quiet_libraries()
    device = trial_device(settings)

    def on_rung(trial_id: str, result: dict[str, Any]) -> bool:
        return wait_holding(coordinator.rung.remote(trial_id, {**result, GROUP_KEY: name}))

    def take(live: list[str]) -> list[tuple[str, TrialConfig]]:
        taken = wait_holding(coordinator.take.remote(name, live))
        members.extend(taken)
        return taken

    def on_done(trial_id: str, metrics: dict[str, Any], adapter_dir) -> None:
        if metrics[STATUS_KEY] == "infeasible":
            coordinator.post.remote(trial_id, ("infeasible", metrics[ERROR_KEY]))
            return
        result = {**stored_result(metrics, adapter_dir, settings, trial_id), GROUP_KEY: name}
        coordinator.post.remote(trial_id, ("result", result))

    members = list(wait_holding(coordinator.claim.remote(name)))
    try:
        run_group(
            list(members),
            settings,
            data,
            device=device,
            on_rung=on_rung if settings.rungs else None,
            take=take,
            on_done=on_done,
        )
    except Exception as err:
        for trial_id, _ in members:  # a member already done has its result: its trial ignores this
            coordinator.post.remote(trial_id, ("error", f"packed group {name}: {type(err).__name__}: {err}"))
        raise
    finally:
        wait_holding(coordinator.retire.remote(name))
        return_freed_memory()


def wait_holding(ref) -> Any:
    """``ray.get(ref)`` that keeps this task's resources. While a task's own thread blocks in ``ray.get`` (or
    ``ray.wait``), Ray lends the task's CPUs to other work, against deadlocks between nested tasks; a group's task
    waits for its members and for each rung's answer, and a trial or another group would start training on the
    cores this group trains on. A wait on another thread lends nothing (``tests/search/worker/packed/test_coordinator.py``
    checks it with a live Ray)."""
    import ray

    with ThreadPoolExecutor(1, thread_name_prefix="wait-holding") as waits:
        return waits.submit(ray.get, ref).result()


@functools.cache
def _group_task():
    """``_train_group`` as a Ray task, made on first use (this module imports without Ray)."""
    import ray

    return ray.remote(_train_group)


__all__ = [
    "GROUP_KEY",
    "PackCoordinator",
    "PackedResources",
    "coordinator_name",
    "packs",
    "start_coordinator",
    "train_packed",
    "wait_holding",
]
