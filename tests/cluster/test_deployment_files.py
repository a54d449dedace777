"""The deployment files in cluster/: valid for Ray and KubeRay, self-consistent, and every command in them is real.

Every ``peft-search ...`` command written anywhere in cluster/ (entrypoints, setup commands, comments, the guide)
is parsed with the real CLI parser, so a renamed command or option fails here rather than on someone's cluster.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml

from peft_search.search.cli import build_parser
from peft_search.search.settings.loading import parse_config
from tests import ROOT

CLUSTER = ROOT / "cluster"
REPO = CLUSTER.parent
YAMLS = sorted([*CLUSTER.glob("*.yaml"), *CLUSTER.glob("*.yml")])
KUBERAY = {"RayCluster", "RayJob"}
# A command starts at `peft-search` (not inside a name like peft-search-results or REGISTRY/peft-search) and ends at
# the line's end or a shell or Markdown boundary.
_COMMAND = re.compile(r"(?<![\w/.~:-])peft-search[ \t]+([^`;|&<>)\n]+)")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _joined_lines(text: str) -> str:
    return re.sub(r"\\\n\s*", " ", text)


def commands(text: str) -> list[list[str]]:
    """Every ``peft-search`` command line in ``text``, split like a shell would (without the program name)."""
    found = []
    for match in _COMMAND.finditer(_joined_lines(text)):
        rest = match.group(1).split(" #")[0].strip()
        found.append(shlex.split(rest))
    return found


def command_problems(
    argv: list[str], mounted_configs: set[str] = frozenset(), *, on_cluster: bool = True
) -> list[str]:
    """Why a command from a deployment file would fail or misbehave; empty when it is fine.

    ``on_cluster``: the command runs on a cluster node (an entrypoint or a launcher command, not prose).
    """
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return [] if exit_.code == 0 else [f"{shlex.join(argv)}: {err.getvalue().strip().splitlines()[-1]}"]
    problems = []
    if on_cluster and args.command == "run" and not args.address:
        problems.append(
            f"{shlex.join(argv)}: on a cluster `run` needs --address auto, or it starts its own Ray"
        )
    config = getattr(args, "config", None)
    if args.command in ("run", "submit", "plan") and config and re.fullmatch(r"[\w./-]+\.ya?ml", config):
        if config.startswith("/configs/"):
            if config not in mounted_configs:
                problems.append(
                    f"{shlex.join(argv)}: {config} is not a key of a ConfigMap mounted at /configs"
                )
        elif not config.startswith("/") and not (REPO / config).is_file():
            problems.append(f"{shlex.join(argv)}: no file {config} in the repository")
    return problems


def _pod_specs(doc: dict) -> list[tuple[str, dict]]:
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return pods


def _ray_cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _mounted_configs(docs: list[dict]) -> set[str]:
    """Paths of the config files that ConfigMaps put under /configs on the head (where a job's driver runs)."""
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    paths = set()
    for doc in docs:
        if doc["kind"] not in KUBERAY:
            continue
        head = _pod_specs(doc)[0][1]
        volumes = {v["name"]: v for v in head.get("volumes", [])}
        for container in head["containers"]:
            for mount in container.get("volumeMounts", []):
                cm = volumes[mount["name"]].get("configMap")
                if cm and cm["name"] in config_maps:
                    paths |= {f"{mount['mountPath']}/{key}" for key in config_maps[cm["name"]]["data"]}
    return paths


def _dockerfile_ray_version() -> str:
    match = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)", (CLUSTER / "Dockerfile").read_text(), re.M)
    assert match, "cluster/Dockerfile must start FROM rayproject/ray:X.Y.Z-..."
    return match.group(1)


def test_there_are_deployment_files():
    names = {p.name for p in YAMLS}
    assert {"aws-gpu.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"} <= names
    assert (CLUSTER / "README.md").is_file()


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_command_is_a_real_cli_command(path):
    text = path.read_text()
    found = commands(text)
    docs = _docs(path)
    mounted = _mounted_configs(docs) if all("kind" in d for d in docs) else set()
    problems = [p for argv in found for p in command_problems(argv, mounted)]
    assert not problems, problems
    # Commands in parsed values (entrypoints, setup commands) are found too, not only those in comments.
    for doc in docs:
        if doc.get("kind") == "RayJob":
            assert commands(doc["spec"]["entrypoint"]), "the RayJob's entrypoint must run a search"


def test_the_guide_and_dockerfile_commands_are_real():
    for name in ("README.md", "Dockerfile"):
        found = commands((CLUSTER / name).read_text())
        problems = [p for argv in found for p in command_problems(argv, on_cluster=False)]
        assert not problems, (name, problems)
    assert {argv[0] for argv in commands((CLUSTER / "README.md").read_text())} >= {
        "submit",
        "logs",
        "status",
        "stop",
    }


def test_the_command_check_can_fail():
    text = """
    entrypoint: peft-search sumbit cfg.yaml
    # peft-search run --address auto /configs/other.yaml --bogus 3
    - peft-search run search/configs/bbcnews-minilm.yaml
    `peft-search logs` and peft-search-results and REGISTRY/peft-search:0.1.0
    """
    found = commands(text)
    assert [argv[0] for argv in found] == ["sumbit", "run", "run", "logs"]
    problems = [command_problems(argv, {"/configs/search.yaml"}) for argv in found]
    assert "invalid choice: 'sumbit'" in problems[0][0]
    assert "unrecognized arguments: --bogus 3" in problems[1][0]
    assert "needs --address auto" in problems[2][0]
    assert "required: job_id" in problems[3][0]
    assert command_problems(["run", "/configs/other.yaml", "--address", "auto"], {"/configs/search.yaml"})
    assert command_problems(["submit", "search/configs/nope.yaml"])


def test_the_launcher_config_passes_rays_own_checks():
    from ray.autoscaler._private.commands import prepare_config

    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    full = prepare_config(config)  # Ray's schema and defaults; raises on an invalid config
    types = full["available_node_types"]
    assert full["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values()), "no GPU worker type"
    assert types[full["head_node_type"]]["resources"].get("GPU", 0) == 0
    for remote, local in config["file_mounts"].items():
        assert local.startswith("~") or (REPO / local).exists(), f"file_mounts {remote}: no {local} here"
    # Token auth: the token reaches every node and Ray starts with it on.
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert any("pip install" in c and "peft-search" in c for c in config["setup_commands"])


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_kuberay_manifests(name):
    docs = _docs(CLUSTER / name)
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys() and doc["metadata"].get("name"), doc
    rays = [d for d in docs if d["kind"] in KUBERAY]
    assert rays, "no RayCluster or RayJob"
    # The token Secret is made from the user's own token file (see the manifest's header), never committed.
    assert "Secret" not in {d["kind"] for d in docs}
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for doc in rays:
        assert doc["apiVersion"] == "ray.io/v1"
        spec = _ray_cluster_spec(doc)
        assert spec["rayVersion"] == _dockerfile_ray_version(), "rayVersion must match the image's Ray"
        assert spec["authOptions"]["mode"] == "token"
        assert spec["workerGroupSpecs"], "no worker group"
        for group in spec["workerGroupSpecs"]:
            assert group["groupName"] and "rayStartParams" in group
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        gpus = [
            c["resources"]["limits"].get("nvidia.com/gpu", 0)
            for _, pod in _pod_specs(doc)[1:]
            for c in pod["containers"]
        ]
        assert any(g >= 1 for g in gpus), "no GPU worker"
        results_mounts = []
        for _, pod in _pod_specs(doc):
            assert pod["containers"], "a pod without containers"
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            mounts = set()
            for container in pod["containers"]:
                assert container.get("name") and container.get("image")
                for mount in container.get("volumeMounts", []):
                    volume = volumes[mount["name"]]  # every mount names a volume of its pod
                    if "configMap" in volume:
                        assert ("ConfigMap", volume["configMap"]["name"]) in by_kind
                    if "persistentVolumeClaim" in volume:
                        claim = by_kind[
                            ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
                        ]
                        assert "ReadWriteMany" in claim["spec"]["accessModes"], "results must be shared"
                        mounts.add(mount["mountPath"])
            results_mounts.append(mounts)
        shared = set.intersection(*results_mounts)
        assert shared, "head and workers must share a results volume"
        if doc["kind"] == "RayJob":
            (argv,) = commands(doc["spec"]["entrypoint"])
            args = build_parser().parse_args(argv)
            assert args.command == "run" and args.results_dir in shared
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            for key, text in doc["data"].items():
                if key.endswith((".yaml", ".yml")):
                    cfg = parse_config(yaml.safe_load(text))  # raises ConfigError naming the field
                    assert cfg.results_dir.startswith("/"), f"{key}: results_dir must be on shared storage"


def test_shared_objects_are_the_same_in_every_file():
    """Both manifests define the results volume; applying both must not fight over it."""
    seen: dict[tuple[str, str], dict] = {}
    for path in YAMLS:
        for doc in _docs(path):
            if "kind" not in doc or doc["kind"] in KUBERAY:
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert seen.setdefault(key, doc) == doc, f"{key} differs between files"
