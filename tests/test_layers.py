"""The rooms' import contracts (pyproject.toml, checked by import-linter): kept today, and broken by a cycle."""

from __future__ import annotations

from pathlib import Path

from tests.lint_imports import lint, package_tree


def _lint(tree: Path):
    return lint(tree)


def _copy(tmp_path: Path) -> Path:
    """The package laid out as it installs, copied (so a test may change it), and the contracts."""
    return package_tree(tmp_path, copy=True)


def _add_import(path: Path, line: str) -> None:
    text = path.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    path.write_text(head + sep + line + "\n" + rest)


def test_the_contracts_hold(tmp_path):
    out = _lint(package_tree(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" in out.stdout and "0 broken" in out.stdout
    # Every room is named in a contract.
    for room in (
        "search.loop",
        "search.worker",
        "search.plan",
        "search.inputs",
        "search.settings",
        "search.results",
    ):
        assert room in (tmp_path / "pyproject.toml").read_text()


def test_an_upward_import_breaks_the_layers(tmp_path):
    root = _copy(tmp_path)
    _add_import(
        root / "peft_search" / "search" / "results" / "metrics.py",
        "import peft_search.search.loop.driver  # noqa",
    )
    out = _lint(root)
    assert out.returncode != 0, out.stdout
    assert "settings > results) BROKEN" in out.stdout  # the layers contract, among others
    assert "peft_search.search.results.metrics -> peft_search.search.loop.driver" in out.stdout


def test_a_cycle_inside_a_room_is_refused(tmp_path):
    # driver -> prepare -> rungs already; rungs -> driver closes a cycle inside search.loop.
    root = _copy(tmp_path)
    _add_import(
        root / "peft_search" / "search" / "loop" / "rungs.py", "import peft_search.search.loop.driver  # noqa"
    )
    out = _lint(root)
    assert out.returncode != 0, out.stdout
    assert "no import cycles between the modules of any package BROKEN" in out.stdout
    assert (
        "No cycles are allowed in peft_search.search.loop." in out.stdout
        and ".rungs -> .driver" in out.stdout
    )


def test_a_top_level_import_of_a_folder_is_refused(tmp_path):
    # From a checkout, `import search` finds the repo's folder as a second, separate copy of the package.
    root = _copy(tmp_path)
    _add_import(root / "peft_search" / "reports" / "html.py", "import search.results.metrics  # noqa")
    out = _lint(root)
    assert out.returncode != 0, out.stdout
    assert "BROKEN" in out.stdout and "peft_search.reports.html -> search (l." in out.stdout


def test_only_the_two_hooks_import_the_packing_wing(tmp_path):
    # The plan command's packing note goes through the driver; importing the wing from the CLI breaks the contract.
    root = _copy(tmp_path)
    _add_import(
        root / "peft_search" / "search" / "cli" / "searching.py",
        "import peft_search.search.worker.packed.plan  # noqa",
    )
    out = _lint(root)
    assert out.returncode != 0, out.stdout
    assert "packing is a wing" in out.stdout and "(removable in one step) BROKEN" in out.stdout
    assert "peft_search.search.cli.searching -> peft_search.search.worker.packed.plan" in out.stdout


def test_the_packages_own_modules_are_imported_at_the_top():
    # Its import list says where a module lives. The one exception: the command line's dispatch (each command's
    # module is loaded when it runs, so `peft-search --help` starts fast) and the Python API's verbs.
    import ast

    from tests import ROOT

    allowed = {ROOT / "search" / "cli" / "__init__.py", ROOT / "peft_search" / "api.py"}
    inside = []
    for folder in ("search", "spaces", "cluster", "reports", "peft_search"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in allowed:
                continue
            for function in ast.walk(ast.parse(path.read_text())):
                if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(function):
                    names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                    names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                    if any(n.startswith("peft_search") for n in names):
                        inside.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert inside == []
