"""`search.warm_start`: a second real search starts from the first one's finished trials; bad input refused early.

Also the study describing itself: `optuna.load_study` alone shows the metric names, each trial's resolved config
and, for an explicit candidate inside the space, its real parameters.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from peft_search.search.errors import ConfigError
from peft_search.search.loop.driver import run_search
from peft_search.search.loop.recovery.attributes import CONFIG as CONFIG_ATTR
from peft_search.search.loop.recovery.attributes import WARM_START as WARM_START_ATTR
from peft_search.search.loop.warm_start import check_warm_start
from peft_search.search.results.layout import ResultsDir
from tests.conftest import CANDIDATES
from tests.helpers import tiny_config

# One worker runs the module (CI: --dist loadgroup), so its search fixture runs once, not on each worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("warm-start")]

IA3_ATTENTION = {
    "name": "ia3-attention",
    "learning_rate": 0.002,
    "peft_config": {
        "peft_type": "IA3",
        "task_type": "SEQ_CLS",
        "target_modules": ["query", "key", "value", "attention.output.dense"],
        "feedforward_modules": [],
    },
}


def _config(tiny_bert, csv, results, previous: Path | None, **changes):
    """small_search's config (conftest), with a new name and the warm start."""
    search = {"num_trials": 2, "sampler": "tpe", "seed": 1, "max_concurrent": 2}
    if previous is not None:
        search["warm_start"] = str(previous)
    raw = {
        "results_dir": str(results),
        "space": {"methods": ["ia3", "bitfit"], "candidates": [*CANDIDATES, IA3_ATTENTION]},
        "search": search,
        "training": {"max_steps": 3},
        "resources": {"cpus_per_worker": 1},
    }
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    return tiny_config(tiny_bert, csv, name="warm", **raw)


@pytest.fixture(scope="module")
def warm(small_search, tiny_bert, classification_csv, tmp_path_factory):
    _, previous = small_search
    cfg = _config(tiny_bert, classification_csv, tmp_path_factory.mktemp("warm"), previous)
    return previous, cfg, Path(run_search(cfg, echo=False))


def test_the_new_study_starts_with_the_previous_finished_trials(warm):
    previous, cfg, search_dir = warm
    before = optuna.load_study(study_name="tiny", storage=ResultsDir(previous).optuna_url)
    study = optuna.load_study(study_name=cfg.name, storage=ResultsDir(search_dir).optuna_url)
    finished = [t for t in before.trials if t.state.is_finished() and t.state.name != "FAIL"]
    carried = [t for t in study.trials if WARM_START_ATTR in t.user_attrs]
    assert len(carried) == len(finished) == 4  # the failed candidate is not evidence
    assert [t.user_attrs[WARM_START_ATTR] for t in carried] == [f"{previous}#{t.number}" for t in finished]
    # The `candidate` choice stays behind (its choices are each search's own names); the user attribute says it.
    assert [(t.params, t.values) for t in carried] == [
        ({k: v for k, v in t.params.items() if k != "candidate"}, t.values) for t in finished
    ]
    assert [t.user_attrs.get("peft_search.candidate") for t in carried] == [
        t.user_attrs.get("peft_search.candidate") for t in finished
    ]
    # They come first: the sampler had them before it proposed anything.
    assert [t.number for t in carried] == list(range(4))


def test_previous_candidates_are_not_run_again_and_new_ones_are(warm):
    _, _, search_dir = warm
    trials = ResultsDir(search_dir).read_trials()
    # lora-qv and no-such-layer ran in the previous search; `breaks` failed there (no evidence) so it runs again.
    assert sorted(trials["candidate"]) == ["breaks", "ia3-attention"]
    assert len(trials) == 2  # the table holds this search's own trials only


def test_optuna_alone_shows_what_every_trial_ran(warm):
    _, cfg, search_dir = warm
    study = optuna.load_study(study_name=cfg.name, storage=ResultsDir(search_dir).optuna_url)
    assert study.metric_names == ["accuracy", "trainable_params", "peak_memory_bytes"]
    mine = [t for t in study.trials if WARM_START_ATTR not in t.user_attrs]
    by_candidate = {t.user_attrs[CONFIG_ATTR]["candidate"]: t for t in mine}
    ia3 = by_candidate["ia3-attention"]
    assert ia3.user_attrs[CONFIG_ATTR]["peft_config"] == IA3_ATTENTION["peft_config"]
    # A candidate inside the space carries the space's own parameters, so TPE models it with its trials.
    assert ia3.params == {
        "candidate": "ia3-attention",
        "method": "ia3",
        "learning_rate": 0.002,
        "ia3.targets": "attention",
    }
    trials = ResultsDir(search_dir).read_trials()
    assert sorted(trials["optuna_trial"].astype(int)) == sorted(t.number for t in mine)


def test_bad_warm_starts_are_refused_naming_the_field(small_search, tiny_bert, classification_csv, tmp_path):
    _, previous = small_search

    def refused(previous_dir, **changes):
        cfg = _config(tiny_bert, classification_csv, tmp_path, previous_dir, **changes)
        with pytest.raises(ConfigError) as err:
            check_warm_start(cfg)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "holds no peft-search search" in refused(tmp_path / "nothing")
    assert "training.max_steps differs" in refused(previous, training={"max_steps": 4})
    assert "space.methods differs" in refused(previous, space={"methods": ["ia3"]})
    assert "objective eval_loss" in refused(
        previous, objectives=[{"metric": "eval_loss"}, {"metric": "trainable_params"}]
    )
    # The sampler, its seed, the trial count and new candidates may change.
    ok = _config(tiny_bert, classification_csv, tmp_path, previous, search={"sampler": "random", "seed": 7})
    assert check_warm_start(ok) == previous
    # Refused before anything is written.
    cfg = _config(tiny_bert, classification_csv, tmp_path, previous, training={"max_steps": 4})
    with pytest.raises(ConfigError):
        run_search(cfg, echo=False)
    assert not (tmp_path / "warm").exists()
