"""``-v``: whether the user asked to see everything (library warnings, Ray's and Tune's own output).

Set once by the CLI in the environment, so the trials Ray starts, on this machine or a cluster, see it too.
"""

from __future__ import annotations

import os

VERBOSE_ENV = "PEFT_SEARCH_VERBOSE"
"""Set by ``-v``: nothing is filtered, in the driver or (passed through Ray) in the trials."""


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")
