"""A search's results directory: the one place that knows its files, reads them and writes them.

``docs/results.md`` is the user's reference to what is written here (every file, every column, its unit). The
trials table carries its schema version in the Parquet metadata; tables written before the version existed (1)
are read as the current one. Paths to the search's own files are relative to its directory (``own_adapter``), so a
search moved or copied elsewhere reads, exports and resumes from where it is. Pure: no torch, no ray (the report
reads through it).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from peft_search.search.errors import DamagedFileError
from peft_search.search.results.metrics import DEFAULT_OBJECTIVES, Objective
from peft_search.search.results.records import TrialResult

SCHEMA_VERSION = 2
SCHEMA_KEY = b"peft_search.schema"

CONFIG_FILE = "config.yaml"
OPTUNA_FILE = "optuna.db"
RUN_FILE = "run.json"
TRIALS_FILE = "trials.parquet"
PREDICTIONS_FILE = "predictions.parquet"
REPORT_FILE = "report.html"
TUNE_DIR = "tune"
TRAIN_DIR = "train"
DATA_DIR = "data"
DRIVER_FILES = (TRIALS_FILE, PREDICTIONS_FILE, OPTUNA_FILE, RUN_FILE)
"""What the driver rewrites as trials finish (mirrored to an object store after every trial)."""
ADAPTER_COLUMN = "adapter_path"
"""The one column naming a file of the search's own: recorded relative to its directory (``own_adapter``)."""

_FIXED_COLUMNS = list(TrialResult("-", "running").to_row())


class ResultsDir:
    """The files of one search (``RESULTS_DIR/NAME``) on local disk (a staging copy, for an object store)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ResultsDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def trials_path(self) -> Path:
        return self.path / TRIALS_FILE

    @property
    def tune_path(self) -> Path:
        return self.path / TUNE_DIR

    @property
    def train_path(self) -> Path:
        return self.path / TRAIN_DIR

    @property
    def optuna_url(self) -> str:
        """The Optuna storage URL: ``optuna.load_study(study_name=NAME, storage=this)``."""
        return f"sqlite:///{self.path / OPTUNA_FILE}"

    def holds_search(self) -> bool:
        return (self.path / CONFIG_FILE).exists()

    def require_search(self, holding: str = CONFIG_FILE) -> None:
        """A one-line ``FileNotFoundError`` unless this directory holds a search (its ``holding`` file), before
        anything is written."""
        if not (self.path / holding).exists():
            raise self._not_a_search(holding)

    def _not_a_search(self, missing: str) -> OSError:
        """Why this path is not a search's results directory, one line: a missing path, a file (inside one,
        named), or a directory without ``missing``."""
        if not self.path.exists():
            return FileNotFoundError(f"{self.path}: no such directory; give a search's results directory")
        if not self.path.is_dir():
            inside = any((self.path.parent / f).is_file() for f in (CONFIG_FILE, TRIALS_FILE))
            where = f"its directory, {self.path.parent}" if inside else "a search's results directory"
            return NotADirectoryError(f"{self.path}: a file, not a results directory; give {where}")
        return FileNotFoundError(f"{self.path}: no {missing}; is this a peft-search results directory?")

    # The config and the run facts.

    def read_config(self) -> dict[str, Any]:
        import yaml

        return yaml.safe_load((self.path / CONFIG_FILE).read_text())

    def write_config(self, config: dict[str, Any]) -> None:
        import yaml

        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))

    def read_facts(self) -> dict[str, Any]:
        """``run.json``; only the name when the search has not written it yet."""
        path = self.path / RUN_FILE
        return json.loads(path.read_text()) if path.exists() else {"name": self.name}

    def write_facts(self, facts: dict[str, Any]) -> None:
        _atomic_write(self.path / RUN_FILE, json.dumps(facts, indent=2))

    def objectives(self) -> tuple[Objective, ...]:
        """The search's own objectives (run facts, else the saved config), else the defaults."""
        listed = self.read_facts().get("objectives")
        if not listed and self.holds_search():
            listed = self.read_config().get("objectives")
        if not listed:
            return DEFAULT_OBJECTIVES
        return tuple(Objective(o["metric"], o["mode"]) for o in listed)

    @property
    def tokenizer_path(self) -> Path:
        """The tokenizer the splits were tokenized with (``data/tokenizer``; searches before 0.1 have none)."""
        return self.path / DATA_DIR / "tokenizer"

    def read_splits(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The exact train and held-out rows (``data/train.parquet``, ``data/eval.parquet``)."""
        data = self.path / DATA_DIR
        return tuple(  # type: ignore[return-value]
            pd.read_parquet(data / f"{split}.parquet").to_dict("records") for split in ("train", "eval")
        )

    def write_splits(self, train: list[dict[str, Any]], held_out: list[dict[str, Any]]) -> None:
        data = self.path / DATA_DIR
        data.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(train).to_parquet(data / "train.parquet", index=False)
        pd.DataFrame(held_out).to_parquet(data / "eval.parquet", index=False)

    # The trials table.

    def read_trials(self) -> pd.DataFrame:
        """One row per trial, at the current schema version."""
        if not self.trials_path.is_file():
            raise self._not_a_search(TRIALS_FILE)
        import pyarrow.parquet as pq

        table = self._read(self.trials_path, pq.read_table)
        version = int((table.schema.metadata or {}).get(SCHEMA_KEY, b"1"))
        if version > SCHEMA_VERSION:
            raise FileNotFoundError(
                f"{self.trials_path}: written by a newer peft-search (table schema {version}); upgrade peft-search"
            )
        frame = _upgrade(table.to_pandas(), version)
        frame[ADAPTER_COLUMN] = frame[ADAPTER_COLUMN].map(self.locate_adapter, na_action="ignore")
        return frame

    def locate_adapter(self, recorded: str | None) -> str | None:
        """Where a recorded adapter is now. The search's own (``train/train-ID/...``) is under this directory,
        wherever the search was when it recorded it (tables written before paths were relative name that place
        absolutely): a moved or copied search exports its own adapters. That old place stands in only while
        nothing is here (a copy made without ``train/``). Any other path, or None, as recorded."""
        own = own_adapter(recorded)
        if own is None:
            return recorded
        here = self.path / own
        if not here.exists() and Path(recorded).is_absolute() and Path(recorded).exists():
            return recorded
        return str(here)

    def read_records(self) -> list[TrialResult]:
        return [TrialResult.from_row(r) for r in self.read_trials().to_dict("records")]

    def write_trials(self, records: Iterable[TrialResult]) -> None:
        """Rewrite the table atomically (readers never see half a file), with its schema version."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [r.to_row() for r in records]
        for row in rows:  # relative: the search moved or copied elsewhere still finds its own adapters
            row[ADAPTER_COLUMN] = own_adapter(row[ADAPTER_COLUMN]) or row[ADAPTER_COLUMN]
        frame = pd.DataFrame(rows, columns=None)
        for column in _FIXED_COLUMNS:
            if column not in frame:
                frame[column] = None
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), SCHEMA_KEY: str(SCHEMA_VERSION).encode()}
        )
        with replacing(self.trials_path) as tmp:
            pq.write_table(table, tmp)

    # Per-row held-out predictions: every complete trial on the same rows, so trials compare row by row.

    def read_predictions(self) -> pd.DataFrame:
        """Long format: ``trial_id``, ``row`` (index into ``data/eval.parquet``), ``label``, ``prediction``,
        ``correct``; empty when the search recorded none."""
        path = self.path / PREDICTIONS_FILE
        if not path.is_file():
            return _predictions_frame({})
        return self._read(path, pd.read_parquet)

    def _read(self, path: Path, reader):
        """``reader(path)``, or one line naming the damaged file and how to rebuild it."""
        try:
            return reader(path)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise DamagedFileError(
                f"{path}: damaged or unreadable ({first}); `peft-search repair {self.path}` rebuilds it from the "
                "trials' own records"
            ) from None

    def correct_by_trial(self) -> dict[str, list[bool]]:
        """Trial id -> whether each held-out row was right, in row order."""
        frame = self.read_predictions().sort_values(["trial_id", "row"], kind="stable")
        return {str(t): group["correct"].astype(bool).tolist() for t, group in frame.groupby("trial_id")}

    def prediction_rows(self) -> dict[str, dict[str, list[int]]]:
        """What ``write_predictions`` takes, read back: trial id -> ``label``/``prediction``/``correct`` lists."""
        frame = self.read_predictions().sort_values(["trial_id", "row"], kind="stable")
        return {
            str(t): {c: group[c].astype(int).tolist() for c in ("label", "prediction", "correct")}
            for t, group in frame.groupby("trial_id")
        }

    def write_predictions(self, rows: dict[str, dict[str, list[int]]]) -> None:
        """Rewrite the predictions of these trials (trial id -> ``label``/``prediction``/``correct`` lists)."""
        with replacing(self.path / PREDICTIONS_FILE) as tmp:
            _predictions_frame(rows).to_parquet(tmp, index=False)


def own_adapter(recorded: str | None) -> str | None:
    """A search's own adapter (``train/train-ID/CHECKPOINT``, where the search's trials and Ray Train save them)
    relative to the search's directory, wherever that was when the path was recorded (an absolute local path, a
    path inside an object store, or relative already); None for any other path."""
    if not isinstance(recorded, str):
        return None
    parts = PurePosixPath(recorded).parts
    if len(parts) >= 3 and parts[-3] == TRAIN_DIR and parts[-2].startswith("train-"):
        return "/".join(parts[-3:])
    return None


PREDICTION_COLUMNS = ("trial_id", "row", "label", "prediction", "correct")


def _predictions_frame(rows: dict[str, dict[str, list[int]]]) -> pd.DataFrame:
    """One long frame, built from flat arrays: it is rewritten as every trial completes, so per-trial frames (and
    their concatenation) would make each write cost more than the last."""
    import numpy as np

    sizes = [len(r["correct"]) for r in rows.values()]

    def column(key: str) -> np.ndarray:
        parts = [r.get(key) or [-1] * n for r, n in zip(rows.values(), sizes, strict=True)]
        return np.fromiter((v for part in parts for v in part), dtype=np.int32, count=sum(sizes))

    return pd.DataFrame(
        {
            "trial_id": np.repeat(np.array(list(rows), dtype=object), sizes),
            "row": np.concatenate([np.arange(n, dtype=np.int32) for n in sizes])
            if sizes
            else np.array([], np.int32),
            "label": column("label"),
            "prediction": column("prediction"),
            "correct": column("correct").astype(bool),
        }
    )


def _upgrade(frame: pd.DataFrame, version: int) -> pd.DataFrame:
    """Read an older table as the current schema."""
    if version < 2 and "status" in frame:
        # 1: early-stopped trials were "stopped"; no Optuna trial number was recorded.
        frame["status"] = frame["status"].replace({"stopped": "stopped_early"})
    for column in _FIXED_COLUMNS:  # columns added since (training_arguments, learning_curve): empty
        if column not in frame:
            frame[column] = None
    return frame


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Write ``path`` whole or not at all: the caller writes the yielded temporary file, which then replaces
    ``path``; on any failure (a full disk) the temporary file is removed and ``path`` is left as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.filename in (None, str(tmp)):
            err.filename = str(path)  # a write to an open file names none: the file being written
        raise


def _atomic_write(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
