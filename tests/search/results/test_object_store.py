"""Results on an object store: a real search writes to S3 (a local moto server speaking the S3 protocol, reached
through pyarrow exactly as a bucket would be), and ``show``, ``report`` and ``best --export`` read from there."""

from __future__ import annotations

import json

import pytest
import yaml

from peft_search.search import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket():
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="searches")
    query = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    yield f"s3://searches/results?{query}", query, boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    server.stop()


def _keys(client) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="searches")
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def test_search_writes_to_and_reads_from_an_object_store(
    ray_local, bucket, tiny_bert, classification_csv, tmp_path, capsys
):
    results_uri, query, client = bucket
    raw = {
        "name": "remote",
        "model": {"name_or_path": tiny_bert},
        "dataset": {"source": classification_csv, "train_per_class": 8, "eval_size": 12},
        "space": {"methods": ["lora", "ia3"], "targets": ["attention"], "ranks": [2]},
        "search": {"num_trials": 2, "max_concurrent": 1},
        "training": {"max_steps": 2, "batch_size": 4, "max_seq_length": 24, "eval_batch_size": 8},
        "resources": {"cpus_per_worker": 1},
        "results_dir": results_uri,
    }
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert cli.main(["run", str(config)]) == 0

    keys = _keys(client)
    for name in ("config.yaml", "trials.parquet", "optuna.db", "run.json", "report.html"):
        assert f"results/remote/{name}" in keys, sorted(keys)
    # Tune's experiment state and every trial's adapter went to the store itself, from the trial's process.
    adapters = [
        k for k in keys if k.startswith("results/remote/train/") and k.endswith("adapter_model.safetensors")
    ]
    assert len(adapters) == 2, sorted(keys)
    assert any(k.startswith("results/remote/tune/experiment_state") for k in keys)

    search_uri = f"s3://searches/results/remote?{query}"
    capsys.readouterr()
    assert cli.main(["show", search_uri]) == 0
    shown = capsys.readouterr().out
    assert shown.count("complete") == 2, shown

    client.delete_object(Bucket="searches", Key="results/remote/report.html")
    assert cli.main(["report", search_uri]) == 0
    assert "results/remote/report.html" in _keys(client)

    out = tmp_path / "best"
    assert cli.main(["best", search_uri, "--export", str(out)]) == 0
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    assert json.loads((out / "trial.json").read_text())["status"] == "complete"

    # `resume` takes the URI too: a finished search restores from Tune's state on the store, with nothing to run.
    assert cli.main(["resume", search_uri]) == 0
    assert capsys.readouterr().out.count("complete") >= 2

    # The same name again is refused before Ray is asked for anything, and nothing in the store changes.
    before = _keys(client)
    capsys.readouterr()
    assert cli.main(["run", str(config)]) == 2
    assert "already holds a search" in capsys.readouterr().err
    assert _keys(client) == before


def test_an_adapter_a_resume_drops_goes_from_the_store_too(bucket, tmp_path):
    """A trial that runs again from scratch loses the adapter it saved before the kill (``Reconciled.dropped``):
    on an object store that copy is removed from the store, not only from the local staging directory."""
    from peft_search.search.results import storage

    base, _, client = bucket
    uri = storage.join(base, "dropping")  # a search of its own in the module's bucket
    (tmp_path / "adapter_config.json").write_text("{}")
    storage.put_dir(tmp_path, uri, "train/train-gone/checkpoint_000000")
    storage.put_dir(tmp_path, uri, "train/train-kept/checkpoint_000000")
    storage.remove_dir(uri, "train/train-gone")
    storage.remove_dir(uri, "train/train-never")  # nothing there: nothing to do
    keys = {
        k for k in _keys(client) if k.startswith("results/dropping/") and not k.endswith("/")
    }  # dir markers
    assert keys == {"results/dropping/train/train-kept/checkpoint_000000/adapter_config.json"}, keys
