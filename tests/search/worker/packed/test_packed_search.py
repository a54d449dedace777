"""Packed trials in a real search (``search.packing``): LoRA-family trials train in groups through one base model,
each still its own Tune and Optuna trial, with its own result, adapter and rung reports; other methods train alone."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from peft_search.search.errors import ConfigError
from peft_search.search.loop.driver import run_search
from peft_search.search.results.layout import ResultsDir
from tests.helpers import tiny_config

pytestmark = pytest.mark.slow

LORA = {"peft_type": "LORA", "task_type": "SEQ_CLS", "lora_dropout": 0.0}
CANDIDATES = [
    {"name": f"lora-{i}", "learning_rate": lr, "peft_config": {**LORA, "r": r, "target_modules": targets}}
    for i, (r, lr, targets) in enumerate(
        [
            (2, 0.01, ["query", "value"]),
            (4, 0.005, ["query", "value"]),
            (2, 0.02, ["query", "key", "value"]),
            (8, 0.01, ["value"]),
        ]
    )
] + [{"name": "ia3", "peft_config": {"peft_type": "IA3", "task_type": "SEQ_CLS"}}]


@pytest.fixture(scope="module")
def packed(ray_local, bert_without_dropout, classification_csv, tmp_path_factory):
    cfg = tiny_config(
        bert_without_dropout,
        classification_csv,
        results_dir=str(tmp_path_factory.mktemp("packed")),
        space={"methods": ["lora"], "candidates": CANDIDATES},
        search={
            "num_trials": 5,
            "packing": 2,
            "early_stopping": {"rule": "asha", "grace_steps": 2, "reduction_factor": 2, "eval_size": 8},
        },
        training={"max_steps": 4},
        resources={"cpus_per_worker": 1},
    )
    return cfg, Path(run_search(cfg, echo=False))


def test_lora_trials_train_in_groups_and_each_stays_a_trial(packed):
    cfg, search_dir = packed
    results = ResultsDir(search_dir)
    trials = results.read_trials().set_index("candidate")
    assert len(trials) == 5
    lora = trials.loc[[c["name"] for c in CANDIDATES[:4]]]
    finished = lora[lora["status"] == "complete"]
    # Two groups of two (packing: 2); each member its own row, with its own adapter and held-out score.
    assert lora["group"].value_counts().tolist() == [2, 2]
    assert (finished["group_size"] == 2).all()
    assert (finished["group_peak_memory_bytes"] >= finished["peak_memory_bytes"]).all()
    assert finished["accuracy"].between(0, 1).all() and finished["adapter_path"].map(_saved).all()
    assert len(set(finished["adapter_path"])) == len(finished)
    # Rung results reached Tune from inside the group: every member was evaluated at step 2 (its curve says so).
    for row in lora.itertuples():
        assert row.status in ("complete", "stopped_early"), row
        if row.status == "stopped_early":
            assert row.stopped_at_step == 2
    assert all(_curve(c)["eval_step"][0] == 2 for c in finished["learning_curve"])
    # IA3 cannot share a forward pass: it trained alone, as without packing.
    assert (
        trials.loc["ia3", "status"] == "complete" and trials.loc["ia3", "group"] != trials.loc["ia3", "group"]
    )
    # To Optuna, each member is its own trial.
    study = optuna.load_study(study_name=cfg.name, storage=results.optuna_url)
    assert sorted(t.number for t in study.trials) == sorted(trials["optuna_trial"].astype(int))


def test_auto_packs_only_where_the_search_measured_a_gain(
    ray_local, bert_without_dropout, classification_csv, tmp_path, capsys
):
    """``auto``: the search measures packing on a worker before its trials, says what it found, and its LoRA trials
    train in groups only where that reached ``PACKING_PAYS`` (which way it goes on this machine is its measurement's:
    test_coordinator.py takes each way on purpose); each way, every trial completes as without packing."""
    from peft_search.search.worker.packed.plan import PACKING_PAYS

    cfg = tiny_config(
        bert_without_dropout,
        classification_csv,
        results_dir=str(tmp_path),
        space={"methods": ["lora"], "candidates": CANDIDATES[:4]},
        search={"num_trials": 4, "packing": "auto"},
        training={"max_steps": 2},
        resources={"cpus_per_worker": 2},
    )
    results = ResultsDir(run_search(cfg))
    trials = results.read_trials()
    said = [line for line in capsys.readouterr().out.splitlines() if "packing (auto)" in line]
    assert len(said) == 1, said
    ran = results.read_facts()["packing"]  # run.json keeps what the line said
    assert (
        f"a row trains {ran['speedup']:.2f}x" in said[0]
        or f", {ran['speedup']:.2f}x ({ran['members']})" in said[0]
    )
    assert ran["members"] in (1, 4, 8, 16)  # auto measures 4, then 8 and 16 where each pays more
    assert (trials["status"] == "complete").all() and trials["adapter_path"].map(_saved).all()
    grouped = (
        trials[trials["group"].notna()] if "group" in trials else trials.iloc[:0]
    )  # no column: none packed
    if ran["members"] > 1:
        assert f"up to {ran['members']} a group" in said[0]
        assert len(grouped) == 4 and (grouped["packing_speedup"] >= PACKING_PAYS).all()
    else:
        assert "each alone" in said[0] and grouped.empty


def test_packing_where_it_cannot_apply_is_refused_before_ray(tiny_bert, classification_csv, tmp_path):
    with pytest.raises(ConfigError, match="search.packing: packed groups train on one worker"):
        tiny_config(
            tiny_bert,
            classification_csv,
            results_dir=str(tmp_path),
            search={"packing": "auto"},
            resources={"num_workers": 2},
        )
    with pytest.raises(ConfigError, match="search.packing"):
        tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path), search={"packing": 0})


@pytest.mark.parametrize(("text", "members"), [("off", 1), ("on", 4), ("auto", 4), ("3", 3), ("1", 1)])
def test_packing_reads_as_yaml_writes_it(tiny_bert, classification_csv, tmp_path, text, members):
    """A bare ``off`` in YAML is false: it still means off."""
    import yaml

    search = yaml.safe_load(f"packing: {text}")
    cfg = tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path), search=search)
    assert cfg.members_per_group() == members


def _saved(path: str) -> bool:
    return (Path(path) / "adapter_model.safetensors").is_file()


def _curve(text: str) -> dict:
    import json

    return json.loads(text)


def test_a_member_the_scheduler_stops_leaves_its_group_and_the_other_trains_on(
    ray_local, bert_without_dropout, classification_csv, tmp_path
):
    """Tune's own scheduler answers each member's rung report; the one it stops leaves the group at that step."""
    import ray
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    from peft_search.search.results.records import RUNG_KEY, STATUS_KEY
    from peft_search.search.worker.packed.coordinator import LOST_S

    class StopOne(FIFOScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            stop = trial.config["candidate"] == "stopped" and result.get(RUNG_KEY) == 2
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    prep = _prepared(bert_without_dropout, classification_csv, tmp_path)
    last, coordinator = _tune_pair(prep.settings, prep.data, tmp_path, StopOne())
    assert last["stopped"][STATUS_KEY] == "running" and last["stopped"][RUNG_KEY] == 2
    assert last["kept"][STATUS_KEY] == "complete" and last["kept"]["train_steps"] == 6
    # Tune's answer reached the group at once (a member never heard from is dropped only after LOST_S).
    assert last["kept"]["time_total_s"] < LOST_S
    assert last["kept"]["group"] == last["stopped"]["group"] == "g0"
    groups = ray.get(coordinator.groups.remote())
    assert list(groups) == ["g0"] and len(groups["g0"]) == 2
    assert last["kept"]["learning_curve"]["eval_step"][0] == 2


def test_the_slot_a_stopped_member_frees_goes_to_a_new_trial_in_the_running_group(
    ray_local, bert_without_dropout, classification_csv, tmp_path
):
    """Tune runs two trials at once; when its scheduler stops one at a rung, the trial Tune starts in its place
    joins the group still training the other (from that group's step, as its own trial), instead of waiting for a
    group of its own."""
    import ray
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    from peft_search.search.results.records import RUNG_KEY, STATUS_KEY

    class StopOne(FIFOScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            stop = trial.config["candidate"] == "stopped" and result.get(RUNG_KEY) == 2
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    prep = _prepared(bert_without_dropout, classification_csv, tmp_path, steps=REFILL_STEPS)
    last, coordinator = _tune_pair(prep.settings, prep.data, tmp_path, StopOne(), third=True)
    assert last["stopped"][STATUS_KEY] == "running" and last["stopped"][RUNG_KEY] == 2
    for name in ("kept", "third"):
        assert last[name][STATUS_KEY] == "complete" and last[name]["train_steps"] == REFILL_STEPS, name
        assert last[name]["group"] == "g0" and last[name]["group_size"] == 2, name
    assert last["kept"]["group_start_step"] == 0 and 2 <= last["third"]["group_start_step"] < REFILL_STEPS
    groups = ray.get(coordinator.groups.remote())
    assert list(groups) == ["g0"] and groups["g0"][2] == last["third"]["trial_id"]
    assert set(groups["g0"][:2]) == {last["kept"]["trial_id"], last["stopped"]["trial_id"]}


def test_a_group_whose_process_dies_fails_its_members_saying_so(
    ray_local, bert_without_dropout, classification_csv, tmp_path
):
    """One process trains the group: when it dies, each member's trial fails with the reason, and nothing hangs."""
    import dataclasses

    from ray.tune.schedulers import FIFOScheduler

    prep = _prepared(bert_without_dropout, classification_csv, tmp_path)
    settings = dataclasses.replace(
        prep.settings, faults={"kept": "exit"}
    )  # os._exit once the model is loaded
    results = _tune_pair(settings, prep.data, tmp_path, FIFOScheduler(), results=True)
    assert len(results.errors) == 2
    for error in results.errors:
        assert "packed group g0 failed" in str(error)


REFILL_STEPS = 3000
"""Steps of each trial in the refill test: long enough that the trial replacing a stopped one (a new trial actor,
which imports its libraries) arrives while the group still trains."""


def _prepared(model, data, tmp_path, steps: int = 6):
    from peft_search.search.loop.prepare import prepare

    cfg = tiny_config(
        model,
        data,
        results_dir=str(tmp_path),
        search={"packing": 2, "early_stopping": {"rule": "asha", "grace_steps": 2, "eval_size": 8}},
        training={"max_steps": steps},
    )
    prep = prepare(cfg)
    assert prep.settings.rungs[0] == 2
    return prep


def _tune_pair(settings, data, tmp_path, scheduler, results: bool = False, third: bool = False):
    """Two LoRA trials (``kept``, ``stopped``) in one packed group, run by Tune with ``scheduler``: the last result
    of each and the coordinator (or, with ``results``, Tune's ResultGrid). With ``third``, a third trial Tune starts
    once one of the two has ended (two trials at a time)."""
    from ray import tune

    from peft_search.search.loop.tuning import FixedConfigs
    from peft_search.search.worker.packed.coordinator import start_coordinator
    from peft_search.search.worker.trial import trial_driver, trial_resources

    coordinator = start_coordinator(settings, data)
    configs = [
        {
            "method": "lora",
            "quantization": "none",
            "learning_rate": 0.01,
            "candidate": name,
            "peft_config": peft,
        }
        for name, peft in [
            ("kept", CANDIDATES[0]["peft_config"]),
            ("stopped", CANDIDATES[1]["peft_config"]),
            ("third", CANDIDATES[2]["peft_config"]),
        ][: 3 if third else 2]
    ]
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, settings=settings, data=data), trial_resources(settings)
    )
    grid = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=FixedConfigs(configs),
            num_samples=len(configs),
            scheduler=scheduler,
            max_concurrent_trials=2 if third else 4,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="pair"),
    ).fit()
    if results:
        return grid
    return {r.config["candidate"]: r.metrics for r in grid}, coordinator


def test_plan_notes_which_candidates_pack_and_the_heaviest_groups_peak(
    tiny_bert, classification_csv, tmp_path
):
    from peft_search.search.plan.planning import plan_search
    from peft_search.search.results.metrics import get_metric
    from peft_search.search.worker.packed.plan import _plan_of, group_peak_bytes, packing_note

    candidates = [*CANDIDATES[:3], {**CANDIDATES[3], "quantization": "int8"}, CANDIDATES[4]]
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        space={"methods": ["lora"], "candidates": candidates},
        search={"packing": 4},
    )
    rows = plan_search(cfg)
    note = packing_note(rows, cfg.members_per_group(), None)
    assert note.startswith("packing (search.packing, up to 4 a group): 4 of 5 candidates can pack")
    # One group holds one quantization level: the 3 unquantized LoRA candidates, not the int8 one.
    plain = [r for r in rows if r["method"] == "lora" and r["quantization"] == "none"]
    figure = get_metric("est_peak_memory_bytes").format(group_peak_bytes([_plan_of(r) for r in plain]))
    assert note.endswith(f"est. peak of the heaviest group (3 x none): {figure}")
    # Over a budget the heaviest group would break, the note says groups stop growing before it.
    assert "over budget.max_memory" in packing_note(rows, 4, max(r["est_peak_memory_bytes"] for r in plain))
    assert packing_note(rows, 1, None) is None
    # auto says a group packs only where it measures a gain.
    auto = packing_note(rows, 4, None, measured=True)
    assert (
        "auto: the search first times a packed step" in auto and "in groups of up to 16 where larger" in auto
    )
    assert "auto:" not in note
