"""Results that travel: a finished search moved or copied elsewhere works with every command from where it is. The
paths it records to its own files are relative to its directory; a table written before they were (absolute, to
where the search then was) reads from where it is now; Tune's saved state names no place of the search's."""

from __future__ import annotations

import json
import pickle
import shutil

import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from peft_search.search.cli import main
from peft_search.search.errors import ConfigError
from peft_search.search.loop.recovery.resume import load_saved_config
from peft_search.search.loop.searcher import SavedStorage, SearchStorage
from peft_search.search.results.layout import TRIALS_FILE, ResultsDir, own_adapter
from peft_search.search.results.records import TrialResult

OWN = "train/train-{}/checkpoint_000000"


def _adapter(search_dir, trial_id: str) -> str:
    path = search_dir / OWN.format(trial_id)
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return str(path)


def _raw_paths(search_dir) -> dict[str, str | None]:
    """The trials table's adapter paths as the file holds them."""
    rows = pq.read_table(search_dir / TRIALS_FILE).to_pylist()
    return {r["trial_id"]: r["adapter_path"] for r in rows}


def test_own_adapters_are_recorded_relative_and_read_where_the_search_is(tmp_path):
    first = ResultsDir(tmp_path / "first" / "s")
    # The search's own adapters as a trial reports them (an absolute path on this machine, a path inside an
    # object store, relative already), a path that is not the search's own (kept as it is), and none.
    records = [
        TrialResult("a", "complete", adapter_path=_adapter(first.path, "a")),
        TrialResult("b", "complete", adapter_path="bucket/runs/s/" + OWN.format("b")),
        TrialResult("c", "complete", adapter_path=OWN.format("c")),
        TrialResult("d", "complete", adapter_path="/somewhere/else/adapter"),
        TrialResult("e", "failed"),
    ]
    first.write_trials(records)
    assert _raw_paths(first.path) == {
        "a": OWN.format("a"),
        "b": OWN.format("b"),
        "c": OWN.format("c"),
        "d": "/somewhere/else/adapter",
        "e": None,
    }
    moved = ResultsDir(tmp_path / "moved" / "s")
    shutil.move(first.path, moved.path)
    read = {r.trial_id: r.adapter_path for r in moved.read_records()}
    assert read == {
        "a": str(moved.path / OWN.format("a")),
        "b": str(moved.path / OWN.format("b")),
        "c": str(moved.path / OWN.format("c")),
        "d": "/somewhere/else/adapter",
        "e": None,
    }
    moved.write_trials(moved.read_records())  # a resume rewrites what it read: relative again
    assert _raw_paths(moved.path)["a"] == OWN.format("a")
    assert [own_adapter(p) for p in ("x/train/y/z", "train-a/checkpoint", None)] == [None, None, None]


def test_a_table_written_with_absolute_paths_reads_from_where_the_search_is_now(tmp_path):
    """Searches written before paths were relative name their adapters where the search then was: moved, those are
    its own under its new place; copied, its own copies, the old place standing in only where the copy has none."""
    old = tmp_path / "old" / "s"
    table = pa.table(
        {
            "trial_id": ["a", "b"],
            "status": ["complete", "complete"],
            "adapter_path": [str(old / OWN.format("a")), str(old / OWN.format("b"))],
        }
    ).replace_schema_metadata({b"peft_search.schema": b"2"})
    here = ResultsDir(tmp_path / "here" / "s")
    here.path.mkdir(parents=True)
    pq.write_table(table, here.trials_path)
    mapped = {t: str(here.path / OWN.format(t)) for t in "ab"}
    assert _read_paths(here) == mapped  # moved: the old place is gone
    for trial_id in "ab":
        _adapter(old, trial_id)
    _adapter(here.path, "a")  # copied, with one adapter of the two: the old place stands in for the other
    assert _read_paths(here) == {"a": mapped["a"], "b": str(old / OWN.format("b"))}


def _read_paths(results: ResultsDir) -> dict[str, str]:
    trials = results.read_trials()
    return dict(zip(trials["trial_id"], trials["adapter_path"], strict=True))


def test_a_renamed_search_is_not_resumed_under_another_name(tmp_path):
    """Its name is its Optuna study's: resumed under another it would start a new study, and run trials again."""
    renamed = tmp_path / "archive" / "tiny-v1"
    renamed.mkdir(parents=True)
    (renamed / "config.yaml").write_text("name: tiny\n")
    with pytest.raises(ConfigError, match=r"holds the search 'tiny', renamed since; .* back to tiny"):
        load_saved_config(renamed)


def test_tunes_saved_searcher_names_no_place(tmp_path):
    """Tune pickles the searcher with the study's storage; unpickled after a move, it must open nothing (the old
    place may be gone, or be the original a copy came from)."""
    place = tmp_path / "search"
    place.mkdir()
    storage = SearchStorage(f"sqlite:///{place / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    saved = pickle.dumps({"storage": storage, "study": study, "trials": {"t": trial}})
    shutil.rmtree(place)
    back = pickle.loads(saved)
    assert isinstance(back["storage"], SavedStorage) and back["trials"]["t"].number == 0
    assert not place.exists()
    with pytest.raises(AttributeError, match="without its place"):
        back["storage"].get_trial(0)


@pytest.mark.slow
def test_a_moved_search_works_with_every_command(small_search, tmp_path, capsys):
    """A finished search moved to a new place, its first place deleted: show, best, best --export (the moved
    search's own adapter), evaluate on that export, report, repair and resume all work from where it is."""
    from safetensors.torch import load_file, save_file

    _, fixture = small_search
    first, moved = tmp_path / "first" / fixture.name, tmp_path / "moved" / fixture.name
    shutil.copytree(fixture, first)
    # As a search written before paths were relative: its table names its adapters under its first place.
    table = pq.read_table(first / TRIALS_FILE)
    absolute = [None if p is None else str(first / p) for p in table.column("adapter_path").to_pylist()]
    column = table.schema.get_field_index("adapter_path")
    pq.write_table(
        table.set_column(column, "adapter_path", pa.array(absolute, pa.string())), first / TRIALS_FILE
    )
    moved.parent.mkdir()
    shutil.move(first, moved)
    shutil.rmtree(tmp_path / "first")
    # The moved adapters' files differ from the fixture's (Tune's own records still name those), weights alike.
    for weights in moved.glob("train/*/*/adapter_model.safetensors"):
        save_file(load_file(str(weights)), str(weights), metadata={"format": "pt", "moved": "yes"})
    (moved / "report.html").unlink()

    assert main(["show", str(moved)]) == 0
    assert capsys.readouterr().out.count("complete") >= 2
    assert main(["best", str(moved), "--format", "json"]) == 0
    pick = json.loads(capsys.readouterr().out)["pick"]["trial_id"]
    adapter = moved / OWN.format(pick) / "adapter_model.safetensors"
    assert adapter.read_bytes() != (fixture / OWN.format(pick) / adapter.name).read_bytes()

    def exported(out) -> bytes:
        assert main(["best", str(moved), "--export", str(out)]) == 0, capsys.readouterr().err
        return (out / "adapter_model.safetensors").read_bytes()

    assert exported(tmp_path / "export") == adapter.read_bytes()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "export"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["reproduced"] is True
    assert main(["report", str(moved)]) == 0 and (moved / "report.html").stat().st_size > 0
    # Rebuilt from Tune's own records (which name the fixture's place): relative, the moved search's own again.
    assert main(["repair", str(moved), "--force"]) == 0
    assert set(_raw_paths(moved).values()) - {None} == {
        OWN.format(t) for t in pd.read_parquet(moved / TRIALS_FILE).query("status == 'complete'")["trial_id"]
    }
    assert exported(tmp_path / "again") == adapter.read_bytes()
    capsys.readouterr()
    # Tune's saved state restores from the new place: nothing set aside, nothing left to run.
    assert main(["resume", str(moved)]) == 0
    out = capsys.readouterr().out
    assert "nothing left to run" in out and "set aside" not in out, out
    # A finished search: Ray is not started to find nothing to run.
    assert "[peft-search] Ray:" not in out, out
    assert not (tmp_path / "first").exists()  # no command went back to the first place
