"""What is never written to a log, a config copy or a report: the values of secret-looking settings.

API keys belong in the environment. Where a setting still carries one (a judge's ``api_key`` model
argument, an ``Authorization`` header in ``default_headers``, an ``HF_TOKEN`` in a server's
environment), its value is replaced by ``***`` wherever empersona writes the setting down.
"""

from __future__ import annotations

from typing import Any

SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "AUTHORIZATION")
"""Parts of a setting's name that mark its value as a secret (HF_TOKEN, api_key, Authorization)."""
MASKED = "***"


def is_secret_name(name: str) -> bool:
    """Whether a setting's name looks like it holds a secret (HF_TOKEN, WANDB_API_KEY, api_key)."""
    return any(marker in str(name).upper() for marker in SECRET_MARKERS)


def redacted(value: Any) -> Any:
    """``value`` with every secret-named entry's value masked, at any depth of dicts and lists."""
    if isinstance(value, dict):
        return {k: MASKED if is_secret_name(k) else redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def without_secrets(value: Any) -> Any:
    """``value`` with every secret-named entry left out, at any depth of dicts and lists (a dict
    that held only secrets goes too): what a setting says apart from its credentials."""
    if isinstance(value, dict):
        kept = {k: without_secrets(v) for k, v in value.items() if not is_secret_name(k)}
        return {k: v for k, v in kept.items() if not (isinstance(v, dict) and not v and value[k])}
    if isinstance(value, list | tuple):
        return [without_secrets(v) for v in value]
    return value


def secret_values(value: Any) -> set[str]:
    """The values of every secret-named entry in ``value``, at any depth (to mask them in a text)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if is_secret_name(k) and isinstance(v, str | int) and not isinstance(v, bool):
                found.add(str(v))
            else:
                found |= secret_values(v)
    elif isinstance(value, list | tuple):
        for v in value:
            found |= secret_values(v)
    return found
