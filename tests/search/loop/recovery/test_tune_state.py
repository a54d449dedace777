"""Tune's saved experiment state, which a resume reads and mends without a public API (``recovery.tune_state``),
and a restored Tuner handed this run's searcher and callbacks (``recovery.private``): checked against a real Tuner
run with the searcher and concurrency limit a search uses, so a Ray release that changes them fails here, by name."""

from __future__ import annotations

import pytest

from peft_search.search.loop.recovery import private, tune_state
from peft_search.search.loop.searcher import PeftOptunaSearch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def _trainable(config):
    from ray import tune

    tune.report({"accuracy": config["x"], "trial_status": "complete"})


def _space(trial):
    trial.suggest_float("x", 0.0, 1.0)


def _searcher(url: str) -> PeftOptunaSearch:
    import optuna

    return PeftOptunaSearch(
        space=_space,
        metric=["accuracy"],
        mode=["max"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="s",
        storage=optuna.storages.RDBStorage(url),
    )


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from ray import tune

    where = tmp_path_factory.mktemp("tune")
    tuner = tune.Tuner(
        _trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(f"sqlite:///{where / 'optuna.db'}"), num_samples=3, max_concurrent_trials=2
        ),
        run_config=tune.RunConfig(name="tune", storage_path=str(where), verbose=0),
    )
    tuner.fit()
    return where


def test_every_field_a_resume_reads_is_where_it_reads_it(experiment):
    state = tune_state.check(experiment / "tune")
    assert sorted(t["status"] for t in state.trials.values()) == ["TERMINATED"] * 3
    assert all(0 <= t["last_result"]["accuracy"] <= 1 for t in state.trials.values())
    assert tune_state.total_samples(state.generator) == 3 and tune_state.has_tuner(experiment / "tune")
    # Mended as a resume mends it: a counter and live trials that read back.
    mended = tune_state.with_counter(state.generator, 1, {"a"})
    limiter = next(v for k, v in mended.items() if k.startswith("name:") and "live_trials" in v)
    assert mended["counter"] == 1 and limiter["live_trials"] == {"a"}


def test_a_format_change_is_named(experiment, tmp_path):
    import shutil

    copy = tmp_path / "tune"
    shutil.copytree(experiment / "tune", copy)
    for path in copy.glob("search_gen_state-*.json"):
        path.unlink()
    with pytest.raises(tune_state.TuneStateChanged, match="search_gen_state"):
        tune_state.check(copy)


def test_a_restored_tuner_takes_this_runs_searcher_and_callbacks(experiment):
    from ray import tune

    tuner = tune.Tuner.restore(str(experiment / "tune"), trainable=_trainable)
    searcher, callbacks = _searcher(f"sqlite:///{experiment / 'optuna.db'}"), [tune.Callback()]
    private.hand_restored_tuner(tuner, callbacks, searcher)
    local = tuner._local_tuner
    assert local.get_run_config().callbacks == callbacks and local._tune_config.search_alg is searcher
