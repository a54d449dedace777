"""The packed groups' coordinator (``search.worker.pack_groups.PackCoordinator``): how it forms groups, and that a
group's task keeps its worker's CPUs while it waits (with a live Ray). In the grouping tests its groups' Ray tasks
are recorded instead of started (``tests/search/test_packed_search.py`` runs them in real searches), so each rule
is checked exactly, whatever a measurement on this machine would say."""

from __future__ import annotations

import pytest

from peft_search.search.plan.packable import PACKING_PAYS
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.worker.pack_groups import PackCoordinator
from peft_search.search.worker.packing import pack_key
from tests.helpers import tiny_config

LORA = {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 2, "target_modules": ["query", "value"]}
TRIALS = [TrialConfig("lora", "none", LORA, lr) for lr in (0.01, 0.02, 0.03, 0.04, 0.05, 0.06)]


class RecordedTasks(PackCoordinator):
    """A coordinator whose groups' tasks are recorded, not started on Ray."""

    def _start(self, forming) -> None:
        self._groups[forming.name] = forming


@pytest.fixture
def coordinator(tiny_bert, classification_csv, tmp_path):
    cfg = tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path), search={"packing": "auto"})
    settings = TrialSettings(config=cfg, model_path=tiny_bert, steps=1, packing=cfg.members_per_group())
    return RecordedTasks(settings, [None], gather_s=0.0), pack_key(TRIALS[0], settings)


def _join(coordinator, *indices: int) -> None:
    for i in indices:
        coordinator.join(f"t{i}", TRIALS[i])


def test_a_kind_measured_not_to_pay_takes_one_member_a_group(coordinator):
    coordinator, key = coordinator
    _join(coordinator, 0, 1)
    assert coordinator.groups() == {"g0": ["t0", "t1"]}  # not measured yet: the group takes up to 4
    coordinator.measured(key, PACKING_PAYS - 0.2)
    _join(coordinator, 2, 3)  # the measuring group took no more; each later one takes one member
    assert coordinator.groups() == {"g0": ["t0", "t1"], "g1": ["t2"], "g2": ["t3"]}
    assert coordinator.claim("g0") == ([("t0", TRIALS[0]), ("t1", TRIALS[1])], PACKING_PAYS - 0.2)
    assert coordinator.claim("g2") == ([("t3", TRIALS[3])], PACKING_PAYS - 0.2)


def test_a_kind_measured_to_pay_fills_its_groups(coordinator):
    coordinator, key = coordinator
    _join(coordinator, 0)
    coordinator.measured(key, PACKING_PAYS + 1.0)
    _join(coordinator, 1, 2, 3, 4, 5)
    assert coordinator.groups() == {"g0": ["t0", "t1", "t2", "t3"], "g1": ["t4", "t5"]}
    assert coordinator.claim("g1") == ([("t4", TRIALS[4]), ("t5", TRIALS[5])], PACKING_PAYS + 1.0)


def test_a_group_keeps_its_cpus_while_it_waits(ray_local):
    """A group's task waits (for members, for a rung's answer) holding its worker's CPUs: a second task asking for
    them starts only once the first has finished. A plain ``ray.get`` on the task's own thread would lend them."""
    import time

    import ray

    from peft_search.search.worker.pack_groups import wait_holding

    cpus = ray.cluster_resources()["CPU"]

    @ray.remote(num_cpus=0)
    def answer_after(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @ray.remote(num_cpus=cpus)
    def group(holding: bool) -> tuple[float, float]:
        start, ref = time.time(), answer_after.remote(4.0)
        (wait_holding if holding else ray.get)(ref)
        return start, time.time()

    @ray.remote(num_cpus=cpus)
    def other() -> float:
        return time.time()

    for holding in (True, False):
        first = group.remote(holding)
        time.sleep(1.0)  # the first is waiting by now
        (start, end), started = ray.get([first, other.remote()])
        assert (started >= end) == holding, (holding, start, end, started)
