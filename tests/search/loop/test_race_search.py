"""``search.race`` on local Ray: the tied configs train again round after round with a shared new seed, ``best`` and
the report read the race, and a search killed mid-round resumes it where it was."""

from __future__ import annotations

import json

import pytest

from peft_search.reports.race import read_race
from peft_search.search.cli import main
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.records import TrialResult

pytestmark = pytest.mark.slow


def test_a_race_settles_or_states_the_tie_and_resumes_mid_round(
    ray_local, tiny_bert, classification_csv, tmp_path, capsys
):
    from peft_search.search.loop.driver import run_search
    from tests.helpers import lora_space, tiny_config

    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        space=lora_space(2, 8),
        # margin 0: nothing is "within margin" unless it is the leader itself, so the race runs its rounds.
        search={"num_trials": 2, "max_concurrent": 2, "race": {"max_rounds": 2, "margin": 0, "budget": 20}},
        training={"max_steps": 1},
        resources={"cpus_per_worker": 1},
    )
    search_dir = run_search(cfg, echo=False)
    capsys.readouterr()
    results = ResultsDir(search_dir)
    raw = results.read_trials()
    race = read_race(search_dir)
    assert (
        race is not None and len(race.entrants) == 2
    )  # one training step: the held-out rows cannot tell them
    runs = raw[raw["race_round"].notna()]
    # Each round: every config still in the race once more, all with the round's seed (a paired block).
    for rnd, group in runs.groupby("race_round"):
        assert set(group["seed"].astype(int)) == {int(rnd)}
        assert set(group["repeat_of"]) <= set(race.entrants)
    assert race.rounds == len(runs.groupby("race_round")) and race.stop is not None
    assert set(runs["repeat_of"]) == set(race.entrants) or race.eliminations
    assert runs["optuna_trial"].isna().all() and (runs["status"] == "complete").all()

    # best picks from the configs the race left (within its margin of the leader where it stopped undecided) and
    # says so; --format json carries the race.
    assert main(["best", str(search_dir), "--format", "json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["pick"]["trial_id"] in race.close and set(race.close) <= set(race.left)
    assert best["race"]["stop"] == race.stop and best["reason"].startswith("race: ")
    assert len(best["race"]["seeds"]) == race.rounds + 1
    page = (search_dir / "report.html").read_text()
    assert "<h2>Race</h2>" in page and race.detail.split(":")[0] in page

    # Killed mid-round: the last round's first run was cut off (still "running"; its own files are not Tune's
    # main state). A resume drops it, replays the race from the table and runs exactly that run again.
    last = runs[runs["race_round"] == runs["race_round"].max()]
    cut = str(last["trial_id"].iloc[0])
    records = [
        TrialResult.from_row(row)
        if row["trial_id"] != cut
        else TrialResult.from_row({**row, "status": "running"})
        for row in raw.to_dict("records")
    ]
    results.write_trials(records)
    run_search(cfg, resume=True, echo=False)
    capsys.readouterr()
    again = results.read_trials()
    rerun = again[again["race_round"].notna() & ~again["trial_id"].isin(runs["trial_id"])]
    assert len(rerun) == 1 and rerun["repeat_of"].iloc[0] == last["repeat_of"].iloc[0]
    assert int(rerun["seed"].iloc[0]) == int(last["seed"].iloc[0]) and rerun["status"].iloc[0] == "complete"
    assert cut not in set(again["trial_id"]) and len(again) == len(raw)
    resumed = read_race(search_dir)
    assert resumed.rounds == race.rounds and resumed.stop is not None
