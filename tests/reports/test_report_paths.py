"""Where ``peft-search report`` reads and writes: a wrong path is one line naming it and the fix (exit 2), and
``-o`` replaces a report it wrote before, never a user's other file."""

from __future__ import annotations

import pytest

from peft_search.search.cli import main
from tests.reports.builders import record


@pytest.fixture
def search(write_search):
    return write_search([record("t0", accuracy=0.5, trainable_params=1000)], [("accuracy", "max")])


def _error(capsys) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


def test_o_replaces_its_own_report_and_no_other_file(search, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["report", str(search), "-o", str(out)]) == 0
    assert main(["report", str(search), "-o", str(out)]) == 0  # an earlier report: replaced
    precious = tmp_path / "notes.txt"
    precious.write_text("keep")
    capsys.readouterr()
    assert main(["report", str(search), "-o", str(precious)]) == 2
    assert _error(capsys).endswith("notes.txt: exists and is not a peft-search report; give another -o")
    assert precious.read_text() == "keep"
    assert main(["report", str(search), "-o", str(precious / "page.html")]) == 2
    assert _error(capsys).endswith("notes.txt: a file, not a directory; give another -o")


@pytest.mark.parametrize("command", ["report", "show"])
def test_a_path_that_is_not_a_results_directory_names_the_fix(search, tmp_path, capsys, command):
    assert main([command, str(search / "trials.parquet")]) == 2
    assert _error(capsys).endswith(f"a file, not a results directory; give its directory, {search}")
    assert main([command, str(tmp_path / "nope")]) == 2
    assert _error(capsys).endswith("nope: no such directory; give a search's results directory")
    assert not (tmp_path / "nope").exists()
