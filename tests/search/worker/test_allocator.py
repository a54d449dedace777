"""The heap allocator of CPU trials (``resources.cpu_allocator``): which library is preloaded, and what a trial
process reports it runs with."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest

from peft_search.cluster import allocator_preload

JEMALLOC = ctypes.util.find_library("jemalloc")


def test_system_and_auto_preload_nothing_even_where_jemalloc_is_installed():
    """The default is the C library's allocator, the fastest measured; the estimate models what it keeps."""
    assert allocator_preload("system") is None
    assert allocator_preload("auto") is None
    if JEMALLOC is not None:
        assert allocator_preload("jemalloc") == JEMALLOC


def test_asking_for_jemalloc_without_it_names_the_field_and_the_fix(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(ValueError, match=r"^resources\.cpu_allocator: .*apt install libjemalloc2"):
        allocator_preload("jemalloc")


def _reported(env: dict[str, str]) -> str:
    """What a trial process started with ``env`` writes in the trials table's ``cpu_allocator``."""
    code = "from peft_search.search.worker.environment import allocator_label; print(allocator_label())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_a_process_reports_the_allocator_it_runs_with_and_jemallocs_options():
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    assert _reported(env) == "system"
    assert (
        _reported({**env, "MALLOC_CONF": "dirty_decay_ms:-1"}) == "system"
    )  # no jemalloc: no options of its
    if JEMALLOC is None:
        pytest.skip("jemalloc is not installed here (CI installs libjemalloc2)")
    assert _reported({**env, "LD_PRELOAD": JEMALLOC}) == "jemalloc"
    no_decay = {**env, "LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
    assert _reported(no_decay) == "jemalloc (dirty_decay_ms:-1,muzzy_decay_ms:-1)"


def test_a_reused_actor_hands_freed_jemalloc_pages_back():
    """Between trials a reused actor returns what the last trial freed, whichever allocator it runs on: with
    jemalloc kept from decaying its pages (as a user's ``MALLOC_CONF`` may), 400 MiB freed leave the resident set."""
    if JEMALLOC is None:
        pytest.skip("jemalloc is not installed here (CI installs libjemalloc2)")
    code = (
        "import psutil, torch\n"
        "from peft_search.search.worker.environment import return_freed_memory\n"
        "rss = lambda: psutil.Process().memory_info().rss\n"
        "blocks = [torch.ones(2**20 * 2) for _ in range(50)]\n"
        "del blocks\n"
        "kept = rss()\n"
        "return_freed_memory()\n"
        "print(kept - rss())\n"
    )
    env = {**os.environ, "LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) > 300 * 2**20


def test_the_drivers_jemalloc_options_travel_with_the_preload(monkeypatch):
    """``MALLOC_CONF`` set where the search is started reaches its workers (on a cluster they do not inherit the
    driver's environment); without jemalloc, or for GPU trials, nothing is set."""
    from peft_search.cluster import worker_env

    monkeypatch.setenv("MALLOC_CONF", "dirty_decay_ms:-1,muzzy_decay_ms:-1")
    assert worker_env("system", 0) is None
    assert worker_env("auto", 0) is None
    assert worker_env("jemalloc", 1) is None
    if JEMALLOC is None:
        pytest.skip("jemalloc is not installed here (CI installs libjemalloc2)")
    assert worker_env("jemalloc", 0) == {
        "LD_PRELOAD": JEMALLOC,
        "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1",
    }
    monkeypatch.delenv("MALLOC_CONF")
    assert worker_env("jemalloc", 0) == {"LD_PRELOAD": JEMALLOC}
