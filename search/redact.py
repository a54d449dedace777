"""Keeping credentials out of what a search writes and prints.

A token can reach a message or a file three ways: the value of a credential environment variable (``HF_TOKEN``,
``RAY_AUTH_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ...) copied into some string, credentials inside a URI
(``s3://KEY:SECRET@bucket``, ``?token=...``), or a mapping key that says it holds one (``hf_token: ...``).
``redact`` masks all three in any JSON-like value; it is pure apart from reading the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

_SECRET_NAME = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|API_?KEY|ACCESS_KEY(_ID)?|PRIVATE_KEY|CREDENTIALS?|AUTH)($|_)",
    re.IGNORECASE,
)
"""Environment variable or mapping key names whose values are credentials (not ``TOKENIZERS_PARALLELISM``)."""
_MIN_SECRET = 8
"""Shorter environment values (``1``, ``true``) are flags, not credentials, and would mask ordinary words."""

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")
_QUERY = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_-]*(?:token|secret|password|passwd|api_?key|access_?key|signature|credential)"
    r"[A-Za-z0-9_-]*|sig|key)=)[^&\s'\"#]+",
    re.IGNORECASE,
)
_SHAPES = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{30,}|(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})\b"
)
"""Well-known token formats: Hugging Face, AWS access key ids, GitHub."""


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of credential environment variables, longest first (so a value inside another goes second)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= _MIN_SECRET}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with credentials masked: environment secrets, URI user info and query tokens, token shapes."""
    for value in env_secrets() if secrets is None else secrets:
        text = text.replace(value, MASK)
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    text = _QUERY.sub(rf"\g<key>{MASK}", text)
    return _SHAPES.sub(MASK, text)


def redact(value: Any, secrets: list[str] | None = None) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings, numbers) with every credential masked."""
    secrets = env_secrets() if secrets is None else secrets
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        return {
            k: MASK
            if isinstance(k, str) and is_secret_name(k) and isinstance(v, str) and v
            else redact(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets) for v in value)
    return value
