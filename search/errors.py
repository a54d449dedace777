"""The errors every room raises: a config that cannot run, and a trial config that cannot train."""

from __future__ import annotations

from peft_search.search.redact import redact_text


class ConfigError(ValueError):
    """A config that cannot be run; the message is one line naming the field and the fix.

    The message is made one line and scrubbed of credentials here, so no caller can print a token by accident.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(redact_text(str(message)).split()))


class DamagedFileError(ConfigError):
    """A results file that cannot be read (truncated, corrupt); the message names it and the next step."""


class InfeasibleTrialError(RuntimeError):
    """The sampled config cannot run on this model (PEFT or bitsandbytes refuses it, it breaks the budget): it is
    recorded as ``infeasible`` and never retried."""
