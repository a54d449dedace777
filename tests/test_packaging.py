"""What `pip install` puts in site-packages: one top-level package, `peft_search`, holding the repo's folders
(setuptools' package-dir mapping); and every module has exactly one dotted name, its file in place."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests import ROOT

FOLDERS = ("search", "spaces", "cluster", "reports")
ONE_NAME_PER_FILE = """
import importlib, pkgutil, sys
from pathlib import Path
import peft_search
for name in ("search", "spaces", "cluster", "reports"):
    package = importlib.import_module(f"peft_search.{name}")
    for info in pkgutil.walk_packages(package.__path__, f"peft_search.{name}."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
import peft_search.api
files = {}
for module_name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    path = Path(path).resolve() if path else None
    if path and path.is_relative_to(sys.argv[1]) and not path.is_relative_to(Path(sys.argv[1], ".venv")):
        files.setdefault(str(path), []).append(module_name)
print(repr(files))
"""


def _config() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_each_folder_is_installed_as_a_subpackage_of_peft_search():
    mapping = _config()["package-dir"]
    assert mapping == {"peft_search": "peft_search", **{f"peft_search.{n}": n for n in FOLDERS}}
    # Every package of the folders is listed (a new room with an __init__.py must be added to pyproject.toml).
    found = {"peft_search"} | {
        "peft_search." + ".".join(init.parent.relative_to(ROOT).parts)
        for name in FOLDERS
        for init in (ROOT / name).rglob("__init__.py")
    }
    assert set(_config()["packages"]) == found
    assert not any((ROOT / "peft_search" / name).exists() for name in FOLDERS), "no second copy or link"


def test_every_module_has_one_name_and_lives_in_place():
    # A fresh process that imports every module of the package: no file is loaded under two dotted names, and each
    # is the repository's own file (the folders themselves, not a copy).
    out = subprocess.run(
        [sys.executable, "-c", ONE_NAME_PER_FILE, str(ROOT)],
        cwd=ROOT.parent,  # not the checkout: its folders must not be importable as top-level names here
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    files = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own repr of a dict of str lists
    twice = {path: names for path, names in files.items() if len(names) > 1}
    assert twice == {}, f"modules imported under two names: {twice}"
    assert str(ROOT / "search" / "loop" / "driver.py") in files
    assert files[str(ROOT / "search" / "loop" / "driver.py")] == ["peft_search.search.loop.driver"]
    every = {str(f) for name in (*FOLDERS, "peft_search") for f in (ROOT / name).rglob("*.py")}
    assert set(files) == every - {str(ROOT / "peft_search" / "__main__.py")}  # the whole package, walked


@pytest.mark.last
def test_no_module_was_imported_under_two_names_in_this_test_session():
    # Everything the tests imported so far (the package, tests.*, benchmarks.*): one name per file.
    files: dict[str, list[str]] = {}
    for module_name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (
            path
            and (ROOT / ".venv") not in Path(path).resolve().parents
            and ROOT in Path(path).resolve().parents
        ):
            files.setdefault(str(Path(path).resolve()), []).append(module_name)
    assert {p: n for p, n in files.items() if len(n) > 1} == {}
    assert not any(name.split(".")[0] in FOLDERS for name in sys.modules), (
        "a folder imported as a top-level name"
    )


@pytest.mark.slow
def test_the_wheel_has_one_top_level_package(tmp_path):
    # Built from a copy (setuptools writes build/ beside the sources); --no-build-isolation: the setuptools of this
    # environment, no download.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("peft_search", *FOLDERS):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
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
