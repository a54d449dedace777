"""``python -m tests.lint_imports``: import-linter's contracts (pyproject.toml) over the package as it installs.

The repository's folders are installed as ``peft_search.search``, ... by setuptools' package-dir mapping, which
Python follows at import time but import-linter's graph builder (grimp) does not: it walks the directory of the
top-level package. So the package is laid out as it installs, in a temporary directory (links to the folders, or
copies to change), and ``lint-imports`` runs over that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("search", "spaces", "cluster", "reports")


def package_tree(dest: Path, *, copy: bool = False) -> Path:
    """``dest/peft_search`` laid out as it installs (links to the repository's files, or copies), and the
    contracts (``dest/pyproject.toml``); ``dest``."""
    package = dest / "peft_search"
    package.mkdir(parents=True)
    for path in (ROOT / "peft_search").glob("*.py"):
        _place(path, package / path.name, copy)
    for name in FOLDERS:
        _place(ROOT / name, package / name, copy)
    shutil.copy(ROOT / "pyproject.toml", dest)
    return dest


def _place(source: Path, target: Path, copy: bool) -> None:
    if not copy:
        target.symlink_to(source)
    elif source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy(source, target)


def lint(tree: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over a ``package_tree``."""
    command = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(command), str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="lint-imports-") as tmp:
        out = lint(package_tree(Path(tmp)))
    print(out.stdout, end="")
    print(out.stderr, end="", file=sys.stderr)
    return out.returncode


if __name__ == "__main__":
    sys.exit(main())
