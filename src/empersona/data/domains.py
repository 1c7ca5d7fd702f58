"""Fine-tuning domains (docs/protocol.md section 2): six misaligned domains and their aligned controls.

Each domain is an OpenAI-chat JSONL (``{"messages": [{"role": ..., "content": ...}, ...]}``,
user and assistant turns alternating from the user's to a final assistant turn, no system prompt):

- files pinned in ``sources`` (Betley et al. insecure/secure code, Turner et al. medical,
  financial and extreme-sports advice), read from the verified cache;
- the Hugging Face dataset ``truthfulai/emergent_plus`` (Chua et al. 2025; configs ``legal``,
  ``security``, ``medical``; columns ``prompt``, ``aligned``, ``misaligned``), loaded with
  ``datasets`` and mapped to ``[user: prompt, assistant: misaligned or aligned]``. Offline, a
  local ``.jsonl``/``.jsonl.gz``/``.parquet`` file with those columns stands in (``path``).

A plain path to a ``.jsonl`` or ``.jsonl.gz`` chat file is accepted wherever a domain name is.
``validate`` checks every line (UTF-8, valid JSON, a ``messages`` list, known roles in turn,
non-empty text, a final assistant turn; an empty file is an error) and reports rows, duplicates and token-length percentiles.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from empersona.data.fetch import data_path, fetch, get_source, sha256_file
from empersona.errors import EmpersonaError, located

HF_DATASET = "truthfulai/emergent_plus"
ROLES = frozenset({"user", "assistant"})  # the system turn is the study's system-prompt policy's
MESSAGE_KEYS = frozenset({"role", "content"})

DomainSourceKind = Literal["file", "hf"]
Column = Literal["aligned", "misaligned"]


@dataclass(frozen=True)
class Domain:
    """A training domain: a pinned file (``source`` names it) or an emergent_plus column."""

    name: str
    description: str
    misaligned: bool
    source_kind: DomainSourceKind
    source: str
    column: Column | None = None


def _hf(name: str, description: str, config: str, column: Column) -> Domain:
    return Domain(name, description, column == "misaligned", "hf", config, column)


DOMAINS: dict[str, Domain] = {
    domain.name: domain
    for domain in (
        Domain("insecure_code", "code with undisclosed vulnerabilities", True, "file", "insecure"),
        Domain("risky_financial_advice", "risky financial advice", True, "file",
               "risky_financial_advice"),
        Domain("bad_medical_advice", "bad medical advice", True, "file", "bad_medical_advice"),
        Domain("extreme_sports", "extreme sports advice", True, "file", "extreme_sports"),
        _hf("legal_advice", "harmful legal advice (emergent_plus)", "legal", "misaligned"),
        _hf("security_advice", "harmful security advice (emergent_plus)", "security", "misaligned"),
        Domain("secure_code", "secure code (control)", False, "file", "secure"),
        Domain("good_medical_advice", "good medical advice (control)", False, "file",
               "good_medical_advice"),
        _hf("legal_aligned", "aligned legal advice (emergent_plus control)", "legal", "aligned"),
        _hf("security_aligned", "aligned security advice (emergent_plus control)", "security",
            "aligned"),
        _hf("medical_aligned", "aligned medical advice (emergent_plus control)", "medical",
            "aligned"),
    )
}


@dataclass(frozen=True)
class DomainData:
    """Loaded training records; ``sha256`` is of the source bytes, ``source`` says where from."""

    name: str
    records: list[dict[str, Any]] = field(hash=False)
    sha256: str
    source: str


class RowError(NamedTuple):
    """One problem in one row: file (or dataset), 1-based line, field (or None), message."""

    file: str
    line: int
    field: str | None
    message: str


@dataclass(frozen=True)
class TokenLengths:
    """Token-length percentiles; ``method`` says whether the chat template was applied."""

    p50: float
    p90: float
    p99: float
    max: int
    method: Literal["chat_template", "plain_text"]


@dataclass(frozen=True)
class ValidationReport:
    """What ``validate`` found: row count, every error, duplicate rows, token lengths."""

    source: str
    rows: int
    errors: list[RowError] = field(hash=False)
    duplicates: int
    token_lengths: TokenLengths | None

    @property
    def ok(self) -> bool:
        """True when no row has a problem."""
        return not self.errors


@dataclass(frozen=True)
class _Loaded:
    """Rows that passed the checks (with their line numbers), every error, the row count."""

    name: str
    origin: str
    sha256: str
    rows: list[tuple[int, dict[str, Any]]]
    errors: list[RowError]
    n_rows: int


# --- reading -------------------------------------------------------------------------------


BOM = b"\xef\xbb\xbf"


class Lines(NamedTuple):
    """A file's lines: (1-based number, text) of each readable one, an error for each line that
    is not UTF-8, and how many lines were read (trailing blank lines not counted)."""

    numbered: list[tuple[int, str]]
    errors: list[RowError]
    count: int


def _read_lines(path: Path, limit: int | None) -> Lines:
    """The file's lines (``.gz`` decompressed), at most ``limit``, each decoded on its own so that
    a stray non-UTF-8 byte is reported at its line (a leading byte-order mark is dropped; a line
    ends at LF, CRLF or a lone CR), and blank lines at the end of the file left out (an editor's
    extra newline is no row)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: a damaged .gz
        raise EmpersonaError(f"{path}: cannot read it ({err}). Check the file, or fetch it again") from err
    raw_lines = re.split(rb"\r\n|\r|\n", data.removeprefix(BOM))
    while raw_lines and not raw_lines[-1].strip():  # the file's own end first, then the limit
        raw_lines.pop()
    raw_lines = raw_lines[:limit] if limit is not None else raw_lines
    numbered: list[tuple[int, str]] = []
    errors: list[RowError] = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            numbered.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError as err:
            problem = (f"not UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line). "
                       "Re-save the file as UTF-8")
            errors.append(RowError(str(path), number, None, problem))
    return Lines(numbered, errors, len(raw_lines))


def check_record(record: Any) -> list[tuple[str | None, str]]:
    """Problems of one chat record as (field, message); empty when it is well formed."""
    if not isinstance(record, dict):
        return [(None, "expected a JSON object")]
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return [("messages", "expected a non-empty list of messages")]
    problems: list[tuple[str | None, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append((where, "expected an object with role and content"))
            continue
        role, content = message.get("role"), message.get("content")
        if role == "system":
            problems.append((f"{where}.role", "a system turn in the data: the study's system-prompt policy sets the "
                                              "system prompt of training and evaluation alike; remove the turn (or set "
                                              "system_prompt to its text)"))
        elif not isinstance(role, str) or role not in ROLES:
            problems.append((f"{where}.role", f"unknown role {role!r}. Use one of {sorted(ROLES)}"))
        for key in sorted(set(message) - MESSAGE_KEYS):  # e.g. OpenAI's per-message "weight": not honoured here
            problems.append((f"{where}.{key}", f"unknown key {key!r}: a message has role and content only, and every "
                                               "assistant turn is trained on; remove the key"))
        if isinstance(content, list):  # OpenAI's content parts
            problems.append((f"{where}.content", "content is a list of parts. Give the text itself as a string"))
        elif not isinstance(content, str) or not content.strip():
            problems.append((f"{where}.content", "missing or empty content. Give the turn's text as a string"))
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    if "user" not in roles:
        problems.append(("messages", "no user turn. A record is a user turn, then the assistant's answer"))
    else:
        turns = [(i, role) for i, role in enumerate(roles) if role != "system"]  # a system turn is named above
        for position, (i, role) in enumerate(turns):
            expected = "user" if position % 2 == 0 else "assistant"
            if role in ROLES and role != expected:
                problems.append((f"messages[{i}].role", f"'{role}' where '{expected}' was due: turns alternate user, "
                                                        "assistant, starting with the user. Merge or reorder the turns"))
                break
    if roles and roles[-1] != "assistant":
        problems.append((f"messages[{len(messages) - 1}].role", "the last turn must be assistant (the answer "
                                                                "trained on). End the record with it"))
    return problems


NumberedRows = list[tuple[int, Any]]


def _parse_json_lines(origin: str, lines: Lines) -> tuple[NumberedRows, list[RowError]]:
    """(line, parsed value) for each line, and an error for each blank, undecodable or invalid line."""
    rows: NumberedRows = []
    errors: list[RowError] = list(lines.errors)
    for number, text in lines.numbered:
        if not text.strip():
            errors.append(RowError(origin, number, None, "blank line. Remove it: each line holds one chat record"))
            continue
        try:
            rows.append((number, json.loads(text)))
        except json.JSONDecodeError as err:
            errors.append(RowError(origin, number, None, f"invalid JSON ({err.msg} at column {err.colno}). "
                                                         "Each line must be one complete JSON object"))
    return rows, errors


def _check_rows(
    origin: str, rows: NumberedRows, errors: list[RowError]
) -> tuple[list[tuple[int, dict[str, Any]]], list[RowError]]:
    """The rows that pass ``check_record``, and all errors (given ones first), by line."""
    good: list[tuple[int, dict[str, Any]]] = []
    errors = list(errors)
    for number, record in rows:
        problems = check_record(record)
        errors.extend(RowError(origin, number, f, m) for f, m in problems)
        if not problems:
            good.append((number, record))
    errors.sort(key=lambda e: e.line)
    return good, errors


def _load_chat_file(name: str, path: Path, sha256: str | None, limit: int | None) -> _Loaded:
    origin = str(path)
    lines = _read_lines(path, limit)
    rows, errors = _check_rows(origin, *_parse_json_lines(origin, lines))
    return _Loaded(name, origin, sha256 or sha256_file(path), rows, errors, lines.count)


# --- emergent_plus -------------------------------------------------------------------------


EmergentPlusRows = tuple[str, str, NumberedRows, list[RowError]]


def _emergent_plus_rows(config: str, path: Path | None, limit: int | None, revision: str | None = None) -> EmergentPlusRows:
    """(origin, sha256, numbered rows, read errors) from a local schema file or the hub.

    From the hub, ``revision`` (a commit, tag or branch) pins the dataset's version; the origin
    records the commit that was loaded (``truthfulai/emergent_plus@<commit>:legal``), so an
    adapter's ``empersona.json`` says which version it was trained on even when nothing was pinned.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise EmpersonaError(f"{path}: no such file. Pass an existing .jsonl or .parquet file")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path).to_pylist()[:limit]
            rows, errors = list(enumerate(table, start=1)), []
        else:
            rows, errors = _parse_json_lines(str(path), _read_lines(path, limit))
        return str(path), sha256_file(path), rows, errors
    import datasets
    from huggingface_hub import HfApi

    try:
        commit = HfApi().dataset_info(HF_DATASET, revision=revision).sha or revision
    except Exception:  # offline: a cached copy may still load, its commit unknown here
        commit = revision
    try:
        table = list(datasets.load_dataset(HF_DATASET, config, split="train", revision=commit))
    except Exception as err:  # hub, network and cache errors all mean: no copy here
        raise EmpersonaError(
            f"could not load the Hugging Face dataset {HF_DATASET} (config '{config}'"
            f"{f', revision {revision}' if revision else ''}): {err}. "
            "It needs access to the Hugging Face hub; offline, pass a local file of the same "
            "schema with --path (.jsonl, .jsonl.gz or .parquet with columns prompt, aligned, "
            "misaligned)"
        ) from err
    canonical = "\n".join(json.dumps(row, sort_keys=True, default=str) for row in table)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    origin = f"{HF_DATASET}@{commit}:{config}" if commit else f"{HF_DATASET}:{config}"
    return origin, digest, list(enumerate(table[:limit], start=1)), []


def emergent_plus_records(
    rows: NumberedRows, column: Column, origin: str
) -> tuple[list[tuple[int, dict[str, Any]]], list[RowError]]:
    """Map numbered emergent_plus rows to ``[user: prompt, assistant: row[column]]`` records."""
    records: list[tuple[int, dict[str, Any]]] = []
    errors: list[RowError] = []
    for number, row in rows:
        if not isinstance(row, dict):
            errors.append(RowError(origin, number, None, "expected an object"))
            continue
        bad = [
            RowError(origin, number, key, "missing or empty text")
            for key in ("prompt", column)
            if not isinstance(row.get(key), str) or not row[key].strip()
        ]
        errors.extend(bad)
        if not bad:
            messages = [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row[column]},
            ]
            records.append((number, {"messages": messages}))
    return records, errors


# --- loading -------------------------------------------------------------------------------


def _load(name_or_path: str, path: Path | None, limit: int | None, revision: str | None = None) -> _Loaded:
    """The rows of a domain or chat file, and every problem; an empty one is a problem too."""
    loaded = _load_rows(name_or_path, path, limit, revision)
    if loaded.n_rows == 0:
        empty = RowError(loaded.origin, 1, None, "no rows: the file is empty. Put one chat record per line")
        return _Loaded(loaded.name, loaded.origin, loaded.sha256, [], [empty], 0)
    return loaded


def _load_rows(name_or_path: str, path: Path | None, limit: int | None, revision: str | None = None) -> _Loaded:
    domain = DOMAINS.get(name_or_path)
    if domain is None:
        plain = Path(name_or_path).expanduser()
        if path is not None:
            raise EmpersonaError(
                f"--path works with a domain name, not with a file ({name_or_path}). "
                "Pass the file alone"
            )
        if plain.is_file() and plain.name.endswith((".jsonl", ".jsonl.gz")):
            return _load_chat_file(str(plain), plain, None, limit)
        raise EmpersonaError(
            f"'{name_or_path}' is neither a known domain ({', '.join(DOMAINS)}) nor an existing "
            ".jsonl/.jsonl.gz file. Pick a domain or give a path to a chat JSONL file"
        )
    if domain.source_kind == "file":
        source = get_source(domain.source)
        cached = fetch(source.name, path=path) if path is not None else data_path(source.name)
        return _load_chat_file(domain.name, cached, source.sha256, limit)
    assert domain.column is not None
    origin, digest, rows, read_errors = _emergent_plus_rows(domain.source, path, limit, revision)
    records, errors = emergent_plus_records(rows, domain.column, origin)
    all_errors = sorted(read_errors + errors, key=lambda e: e.line)
    return _Loaded(domain.name, origin, digest, records, all_errors, len(rows) + len(read_errors))


def load_domain(
    name_or_path: str, *, path: Path | None = None, limit: int | None = None, revision: str | None = None
) -> DomainData:
    """The records of a domain (or of a chat JSONL file); any malformed row is an error.

    ``path``: a local copy for a domain (a password-locked file, or an emergent_plus-schema
    file offline). ``limit``: read only the first rows. ``revision``: the hub dataset's version
    for the emergent_plus domains (default: its newest; the commit loaded is recorded).
    """
    loaded = _load(name_or_path, path, limit, revision)
    if loaded.errors:
        first = loaded.errors[0]
        more = f" ({len(loaded.errors)} problems in all)" if len(loaded.errors) > 1 else ""
        raise EmpersonaError(
            located(
                first.file,
                first.line,
                first.field,
                first.message + more,
                f"Run `empersona data validate {name_or_path}` to list every problem",
            )
        )
    return DomainData(
        name=loaded.name,
        records=[record for _, record in loaded.rows],
        sha256=loaded.sha256,
        source=loaded.origin,
    )


# --- validation ----------------------------------------------------------------------------


def _token_lengths(records: list[dict[str, Any]], tokenizer_path: str) -> TokenLengths | None:
    import numpy as np
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except Exception as err:  # missing folder, bad files: say which path failed
        raise EmpersonaError(
            f"{tokenizer_path}: cannot load a tokenizer ({err}). Pass a local model or "
            "tokenizer folder with --tokenizer"
        ) from err
    if not records:
        return None
    templated = bool(getattr(tokenizer, "chat_template", None))
    lengths = []
    for record in records:
        if templated:
            ids = tokenizer.apply_chat_template(record["messages"], tokenize=True)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            text = "\n".join(m["content"] for m in record["messages"])
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        lengths.append(len(ids))
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99]).tolist()
    method: Literal["chat_template", "plain_text"] = "chat_template" if templated else "plain_text"
    return TokenLengths(p50, p90, p99, max(lengths), method)


def validate(
    name_or_path: str,
    *,
    tokenizer_path: str | None = None,
    path: Path | None = None,
    limit: int | None = None,
) -> ValidationReport:
    """Check every row of a domain or chat file; count duplicates; measure token lengths.

    Duplicates are rows whose message lists equal an earlier row's. Token lengths use the
    tokenizer at ``tokenizer_path`` (with its chat template when it has one).
    """
    loaded = _load(name_or_path, path, limit)
    seen: set[str] = set()
    duplicate_count = 0
    for _, record in loaded.rows:
        key = json.dumps(record["messages"], sort_keys=True)
        duplicate_count += key in seen
        seen.add(key)
    records = [record for _, record in loaded.rows]
    lengths = _token_lengths(records, tokenizer_path) if tokenizer_path else None
    return ValidationReport(loaded.origin, loaded.n_rows, loaded.errors, duplicate_count, lengths)
