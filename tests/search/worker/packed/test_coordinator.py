"""The packed groups' coordinator (``search.worker.packed.coordinator.PackCoordinator``): how it forms groups, and that a
group's task keeps its worker's CPUs while it waits (with a live Ray). In the grouping tests its groups' Ray tasks
are recorded instead of started (``tests/search/test_packed_search.py`` runs them in real searches), so each rule
is checked exactly, whatever a measurement on this machine would say."""

from __future__ import annotations

import dataclasses

import pytest

from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.worker.packed import auto as packing_auto
from peft_search.search.worker.packed import plan as packable
from peft_search.search.worker.packed.coordinator import PackCoordinator
from peft_search.search.worker.packed.group import pack_key
from tests.helpers import tiny_config

LORA = {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 2, "target_modules": ["query", "value"]}
TRIALS = [TrialConfig("lora", "none", LORA, lr) for lr in (0.01, 0.02, 0.03, 0.04, 0.05, 0.06)]


class RecordedTasks(PackCoordinator):
    """A coordinator whose groups' tasks are recorded, not started on Ray."""

    def _start(self, forming) -> None:
        self._groups[forming.name] = forming


@pytest.fixture(scope="module")
def prep(tiny_bert, classification_csv, tmp_path_factory):
    from peft_search.search.loop.prepare import prepare

    cfg = tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path_factory.mktemp("decide")))
    return prepare(cfg)


@pytest.fixture
def coordinator(tiny_bert, classification_csv, tmp_path):
    cfg = tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path), search={"packing": "auto"})
    settings = TrialSettings(config=cfg, model_path=tiny_bert, steps=1, packing=cfg.members_per_group())
    return RecordedTasks(settings, [None], gather_s=0.0), pack_key(TRIALS[0], settings)


def _join(coordinator, *indices: int) -> None:
    for i in indices:
        coordinator.join(f"t{i}", TRIALS[i])


def test_a_group_takes_members_of_its_kind_up_to_the_search_s_size(coordinator):
    coordinator, _ = coordinator
    _join(coordinator, 0, 1, 2, 3, 4, 5)
    assert coordinator.groups() == {"g0": ["t0", "t1", "t2", "t3"], "g1": ["t4", "t5"]}
    assert coordinator.claim("g1") == [("t4", TRIALS[4]), ("t5", TRIALS[5])]  # gather_s 0: at once


def test_a_running_group_takes_new_members_into_the_slots_others_free(coordinator):
    """While a group trains, a trial of its kind joins it where a member left (``take`` says who is still in it);
    a full group sends it to the next group, and a group that ends passes on whoever it did not take."""
    coordinator, _ = coordinator
    _join(coordinator, 0, 1, 2, 3)
    assert [t for t, _ in coordinator.claim("g0")] == ["t0", "t1", "t2", "t3"]
    _join(coordinator, 4)  # g0 is full: a new group forms
    assert coordinator.groups() == {"g0": ["t0", "t1", "t2", "t3"], "g1": ["t4"]}
    assert coordinator.take("g0", ["t0", "t2", "t3"]) == []  # t1 left: one slot free
    _join(coordinator, 5)
    assert coordinator.groups() == {"g0": ["t0", "t1", "t2", "t3", "t5"], "g1": ["t4"]}
    assert coordinator.take("g0", ["t0", "t2", "t3"]) == [("t5", TRIALS[5])]
    coordinator.take("g0", ["t0"])  # three left: three slots
    coordinator.join("t6", TRIALS[0])
    coordinator.retire("g0")  # it ended before taking t6: t6 joins the group forming
    assert coordinator.groups() == {"g0": ["t0", "t1", "t2", "t3", "t5"], "g1": ["t4", "t6"]}
    coordinator.join("t7", TRIALS[1])  # no group trains now: it joins the one forming
    assert coordinator.groups()["g1"] == ["t4", "t6", "t7"]


@pytest.mark.slow
@pytest.mark.parametrize("pays", [True, False])
def test_auto_packs_where_the_workers_device_measures_a_gain(ray_local, prep, monkeypatch, capsys, pays):
    """``decide_packing`` measures on a worker (a Ray task with a worker's resources), then reads the figures from
    the cache; the search packs at the size ``packing_size`` takes from them (its bar set here so each way is
    taken), else trains each trial alone."""
    monkeypatch.setattr(packable, "PACKING_PAYS", 0.0 if pays else float("inf"))
    settings = dataclasses.replace(prep.settings, packing=3)
    first = packing_auto.decide_packing(settings, prep.data, "none")
    again = packing_auto.decide_packing(settings, prep.data, "none")
    # The worker measured larger groups where its own bar (the real one) said they pay: 3, 6 or 12.
    assert first.packing == again.packing and first.packing in ((3, 6, 12) if pays else (1,))
    assert 0 < first.packing_speedup == again.packing_speedup < 100
    lines = capsys.readouterr().out.splitlines()
    assert "packing (auto): a row trains" in lines[0] and "(3 LoRA adapters a step)" in lines[0]
    assert "(cached;" in lines[1] and (f"up to {first.packing} a group" if pays else "each alone") in lines[1]


@pytest.mark.slow
def test_a_measurement_that_fails_leaves_the_search_unpacked_saying_why(ray_local, prep, capsys, tmp_path):
    settings = dataclasses.replace(prep.settings, packing=3, model_path=str(tmp_path / "no-model-here"))
    decided = packing_auto.decide_packing(settings, prep.data, "none")
    assert decided.packing == 1 and decided.packing_speedup is None
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("[peft-search] packing (auto): not measured (") and "train each alone" in line


@pytest.mark.slow
def test_a_group_keeps_its_cpus_while_it_waits(ray_local):
    """A group's task waits (for members, for a rung's answer) holding its worker's CPUs: a second task asking for
    them starts only once the first has finished. A plain ``ray.get`` on the task's own thread would lend them."""
    import time

    import ray

    from peft_search.search.worker.packed.coordinator import wait_holding

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
