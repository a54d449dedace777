"""A trial's process keeps its logs to what matters: expected library messages are dropped by message, nothing else."""

from __future__ import annotations

import logging
import warnings

from peft_search.search.verbosity import VERBOSE_ENV
from peft_search.search.worker.environment import quiet_libraries


def test_the_int8_cast_message_is_dropped_and_the_loggers_other_messages_kept(caplog):
    quiet_libraries()
    quiet_libraries()  # every trial calls it: the filter is added once
    log = logging.getLogger("bitsandbytes.autograd._functions")
    assert len(log.filters) == 1
    with caplog.at_level(logging.WARNING):
        log.warning(
            "MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "torch.float32"
        )
        log.warning("MatMul8bitLt: something else entirely")
    assert [r.getMessage() for r in caplog.records] == ["MatMul8bitLt: something else entirely"]


def test_peft_zero_rank_shard_warning_is_dropped_and_other_warnings_kept():
    quiet_libraries()
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn(
            "Adapter 'default': 12 LoRA tensor(s) have invalid shape: x:(0, 384). ZeRO-3 ...", stacklevel=1
        )
        warnings.warn("Adapter 'default': something else", stacklevel=1)
    assert [str(w.message) for w in seen] == ["Adapter 'default': something else"]


def test_verbose_keeps_every_library_message(monkeypatch):
    import logging

    from peft_search.search.worker import environment

    logger = logging.getLogger("bitsandbytes.autograd._functions")
    cast = logging.LogRecord(
        logger.name, logging.WARNING, __file__, 1, "MatMul8bitLt: inputs will be cast", None, None
    )
    monkeypatch.setattr(logger, "filters", [])
    monkeypatch.setenv(VERBOSE_ENV, "1")
    environment.quiet_libraries()
    assert logger.filter(cast)  # -v: shown
    monkeypatch.delenv(VERBOSE_ENV)
    environment.quiet_libraries()
    assert not logger.filter(cast)  # by default: filtered, by its message only
    other = logging.LogRecord(logger.name, logging.WARNING, __file__, 1, "something else", None, None)
    assert logger.filter(other)
