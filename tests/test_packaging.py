"""What `pip install` puts in site-packages: one top-level package, `peft_search`, holding the repo's folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("search", "spaces", "cluster", "reports")


def test_the_package_links_to_each_folder():
    for name in FOLDERS:
        link = ROOT / "peft_search" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), name


@pytest.mark.slow
def test_the_wheel_has_one_top_level_package(tmp_path):
    # Built from a copy (setuptools writes build/ beside the sources), its links kept as links, as git checks
    # them out; --no-build-isolation: the setuptools of this environment, no download.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("peft_search", *FOLDERS):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("peft_search-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"peft_search", wheel.name.split("-py")[0] + ".dist-info"}
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["peft_search"]
    for name in FOLDERS:
        assert any(n.startswith(f"peft_search/{name}/") and n.endswith("__init__.py") for n in names), name
    assert "peft_search/search/configs/bbcnews-minilm.yaml" in names
    assert "peft_search/search/cli/__init__.py" in names and "peft_search/__main__.py" in names
