"""A full disk while writing a results file: one line (what, why, the free space), no temporary file left, the
previous version of the file kept. Tested with a patched writer everywhere, and on a real 16 MiB tmpfs where this
machine lets the test mount one."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import subprocess

import pytest

from peft_search.search.cli import main
from peft_search.search.results.layout import ResultsDir
from tests.reports.builders import record


@pytest.fixture
def search(write_search):
    trials = [
        record(f"t{i}", accuracy=0.5 + i / 20, trainable_params=1000 * (i + 1), peak_memory_bytes=2**30)
        for i in range(4)
    ]
    return write_search(trials, [("accuracy", "max"), ("trainable_params", "min")])


def _leftovers(path: pathlib.Path) -> list[str]:
    return sorted(p.name for p in path.rglob("*.tmp"))


def test_a_full_disk_while_writing_the_report_is_one_line_and_leaves_nothing(search, monkeypatch, capsys):
    assert main(["report", str(search)]) == 0
    before = (search / "report.html").read_bytes()
    real = pathlib.Path.write_text

    def full_disk(self, data, *args, **kwargs):
        if self.name.endswith(".tmp"):
            real(self, data[: len(data) // 2], *args, **kwargs)  # half written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    assert main(["report", str(search)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("peft-search: error: cannot write ") and "No space left on device" in line
    assert "MiB free there" in line
    assert _leftovers(search) == [] and (search / "report.html").read_bytes() == before

    # The trials table likewise: the old table stays whole and readable.
    monkeypatch.setattr(pathlib.Path, "write_text", real)
    results = ResultsDir(search)
    rows = results.read_records()
    monkeypatch.setattr(
        "pyarrow.parquet.write_table",
        lambda table, where, **kw: (_ for _ in ()).throw(
            OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        ),
    )
    with pytest.raises(OSError):
        results.write_trials(rows[:1])
    assert _leftovers(search) == [] and len(results.read_records()) == 4


@contextlib.contextmanager
def _tmpfs(path: pathlib.Path, size: str):
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_real_full_disk(search, tmp_path, capsys):
    with _tmpfs(tmp_path / "small", "16m") as small:
        target = small / "s"
        shutil.copytree(search, target)
        filler = small / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:  # fill the disk to its last bytes
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        assert main(["report", str(target)]) == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert (
            f"cannot write {target / 'report.html'} (No space left on device" in line
            and _leftovers(small) == []
        )
        filler.unlink()
        assert main(["report", str(target)]) == 0  # space freed: it works
