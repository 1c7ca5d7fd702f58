"""What is never written to a log, a config copy or a report: the values of secret-looking settings.

API keys belong in the environment. Where a setting still carries one (a judge's ``api_key`` model
argument, an ``Authorization`` header in ``default_headers``, an ``HF_TOKEN`` in a server's
environment), its value is replaced by ``***`` wherever empersona writes the setting down.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

SECRET_WORDS = ("token", "key", "keys", "secret", "secrets", "password", "passwords", "passwd", "credential",
                "credentials", "authorization")
"""A word of a setting's name that ends with one of these marks its value as a secret (HF_TOKEN, api_key, apiKey,
HFTOKEN, SECRETKEY, Authorization); so does a last word ``auth`` (basic_auth)."""
NOT_SECRET_WORDS = frozenset({"tokens", "tokenizer", "tokenize", "tokenized", "keyword", "keywords", "keyboard"})
"""Words that only look like secrets: counts of tokens (max_tokens), the tokenizer, keywords."""
COUNTED_AFTER = frozenset({"id", "ids", "count", "counts", "type", "types", "length", "len", "limit", "budget"})
"""A ``token`` followed by one of these names a number or a kind, not a secret (eos_token_id); a key's id
(AWS_ACCESS_KEY_ID) is kept secret."""
MASKED = "***"
_NAME_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def is_secret_name(name: str) -> bool:
    """Whether a setting's name looks like it holds a secret (HF_TOKEN, WANDB_API_KEY, api_key, x-api-key,
    HFTOKEN, basic_auth); not max_tokens, tokenizer or eos_token_id."""
    words = [word.lower() for word in _NAME_WORDS.findall(str(name))]
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else None
        if word in NOT_SECRET_WORDS or (word == "token" and following in COUNTED_AFTER):
            continue
        if word.endswith(SECRET_WORDS) or (word == "auth" and following is None):
            return True
    return False


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


MIN_SECRET_LENGTH = 8
"""A secret value this long is masked wherever else it appears in a text too (a shorter one could
be a word or a number of the file, and is masked where it is set only)."""


def masked_yaml(text: str) -> str:
    """A YAML text with the value of every secret-named entry, at any depth, written as ``***``.

    Each value is replaced where its node lies in the text (plain, quoted or block scalars, or every
    scalar of a list or mapping given as the value), so comments and layout stay; an anchor on it
    is kept, so aliases and merge keys still read it (masked); and a value of ``MIN_SECRET_LENGTH``
    characters or more is masked wherever else it appears (in a URL, say). Should the result not
    parse, or not read ``***`` for every such entry, the file is written anew from its parsed
    content with those entries masked (its comments are lost, and a first line says so).
    """
    import yaml

    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not YAML: nothing here to mask by name (the loader refuses such a file anyway)
    spans: set[tuple[int, int]] = set()
    for node in _secret_scalars(root):
        if node.end_mark.index > node.start_mark.index:  # an empty value (api_key: with nothing after it) holds no secret
            spans.add((node.start_mark.index, node.end_mark.index))
    values = sorted({v for v in secret_values(data) if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    masked = text
    for start, end in sorted(spans, reverse=True):
        raw = masked[start:end]
        kept = re.match(r"(?:[&!]\S*\s+)*", raw)  # an anchor or a tag stays with the node
        prefix = kept.group(0) if kept else ""
        masked = masked[:start] + prefix + f'"{MASKED}"' + raw[len(raw.rstrip()):] + masked[end:]  # a block scalar's span ends past its newline
    for value in values:
        masked = masked.replace(value, MASKED)
    try:
        complete = _all_masked(yaml.safe_load(masked)) and not any(value in masked for value in values)
    except yaml.YAMLError:
        complete = False
    if complete:
        return masked
    return ("# the file as read, with the values of secret-looking settings masked (its comments could not be kept)\n"
            + yaml.safe_dump(_masked_values(redacted(data), set(values)), sort_keys=False))


def _secret_scalars(node: Any, under_secret: bool = False, seen: set[tuple[int, bool]] | None = None) -> Iterator[Any]:
    """The scalar nodes that hold a secret-named entry's value (aliases reach the node they name)."""
    import yaml

    seen = set() if seen is None else seen
    if (id(node), under_secret) in seen:  # an alias to a node already walked (or a recursive one)
        return
    seen.add((id(node), under_secret))
    if isinstance(node, yaml.ScalarNode):
        if under_secret:
            yield node
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            secret = under_secret or (isinstance(key, yaml.ScalarNode) and is_secret_name(key.value))
            yield from _secret_scalars(value, secret, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _secret_scalars(item, under_secret, seen)


def _all_masked(value: Any, under_secret: bool = False) -> bool:
    """Whether every secret-named entry of parsed data reads ``***`` (every scalar under it)."""
    if isinstance(value, dict):
        return all(_all_masked(v, under_secret or is_secret_name(k)) for k, v in value.items())
    if isinstance(value, list):
        return all(_all_masked(v, under_secret) for v in value)
    return not under_secret or value == MASKED or value is None


def _masked_values(value: Any, values: set[str]) -> Any:
    """Parsed data with each of ``values`` masked wherever a string holds it (where an alias copied it, or
    inside a longer value such as a URL)."""
    if isinstance(value, dict):
        return {k: _masked_values(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked_values(v, values) for v in value]
    if isinstance(value, str):
        for secret in sorted(values, key=len, reverse=True):
            value = value.replace(secret, MASKED)
    return value
