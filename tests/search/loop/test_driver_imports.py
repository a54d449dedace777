"""The driver's process imports what it runs: not the trials' training libraries (transformers' Trainer, PEFT,
bitsandbytes: about 5 s of a process's start), which the trials' own processes import (``search.worker.trial``)."""

from __future__ import annotations

import subprocess
import sys

TRAINING = ("peft", "bitsandbytes", "transformers.trainer", "peft_search.search.worker.training")


def test_the_driver_imports_no_training_library():
    code = (
        "import sys; import peft_search.search.loop.driver, peft_search.search.cli.searching;"
        f"print(*[name for name in ('torch', 'ray.tune', *{TRAINING!r}) if name in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["torch", "ray.tune"]  # what it runs on, and none of the trials' libraries
