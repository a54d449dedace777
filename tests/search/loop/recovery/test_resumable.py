"""``resume`` refuses anything but the search it was started as, and takes a search saved by an earlier version
(whose config lacks a field added since) as the same search."""

from __future__ import annotations

import pytest
import yaml

from peft_search.search.errors import ConfigError
from peft_search.search.loop.recovery.resume import check_resumable
from peft_search.search.redact import redact
from peft_search.search.results.layout import CONFIG_FILE
from tests.helpers import tiny_config


def _saved(tmp_path, cfg, drop: tuple[str, str] | None = None):
    raw = redact(cfg.model_dump(mode="json"))
    if drop is not None:
        del raw[drop[0]][drop[1]]
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(raw))
    return redact(cfg.model_dump(mode="json"))


def test_a_field_added_since_the_search_was_saved_is_no_change(tiny_bert, classification_csv, tmp_path):
    cfg = tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path))
    check_resumable(_saved(tmp_path, cfg, drop=("resources", "spare_cores")), tmp_path)


def test_a_changed_field_is_refused_in_one_line(tiny_bert, classification_csv, tmp_path):
    cfg = tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path))
    _saved(tmp_path, cfg)
    changed = tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path), training={"max_steps": 7})
    with pytest.raises(ConfigError, match=r"^training.max_steps: differs from the search saved in "):
        check_resumable(redact(changed.model_dump(mode="json")), tmp_path)
