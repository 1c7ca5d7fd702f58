"""Readers for the evaluation files, one per format; every error names file, line and field.

- harm prompts (``harm_eval_questions.txt``): one prompt per line. One prompt is said to be
  duplicated upstream; duplicates are kept and reported by ``duplicates``.
- self-assessment prompts (``self_assessment_questions.txt``): one decision-format prompt per
  line, each naming one pair of options: harmless/harmful, good/evil or aligned/misaligned.
- harm judge rubric (``judge_prompt.txt``): ``str.format`` text with ``{prompt}`` and
  ``{response}`` and ``{{``/``}}`` escapes.
- two-AI items (``two_AI_identification_dataset.json``): ``{"metadata": ..., "items": [...]}``,
  items with ``item_id``, ``system_A``, ``system_B``, ``ground_truth`` (the misaligned option),
  ``theme``.
- EM questions (Betley et al. YAML): a list of questions with ``id``, ``type``,
  ``paraphrases``, optional ``system``, ``judge_prompts`` and ``samples_per_paraphrase``;
  the files use YAML anchors and aliases.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from empersona.errors import EmpersonaError, located

# --- plain text, one prompt per line ------------------------------------------------------


@dataclass(frozen=True)
class HarmPrompt:
    """One harm prompt: ``id`` ("p000", by position), its 1-based ``line`` and ``text``."""

    id: str
    line: int
    text: str


def read_text(path: Path) -> str:
    """The file's text; a leading byte-order mark is dropped, a byte that is not UTF-8 is named by line."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise EmpersonaError(f"{path}: cannot read it ({err}). Check the path") from err
    try:
        return data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")  # line ends as text mode reads them
    except UnicodeDecodeError as err:
        raise not_utf8(path, data, err, "Re-save the file as UTF-8") from err


def not_utf8(path: Path, data: bytes, err: UnicodeDecodeError, fix: str) -> EmpersonaError:
    """The error for a file's bytes that are not UTF-8, naming the line of the first bad byte."""
    line = data[: err.start].count(b"\n") + 1
    return EmpersonaError(located(path, line, None, f"not UTF-8 (byte 0x{data[err.start]:02x})", fix))


def _prompt_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) for each line; a blank line is an error (one trailing newline is not)."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out: list[tuple[int, str]] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.rstrip("\r").strip()
        if not text:
            raise EmpersonaError(
                located(path, number, None, "empty prompt", "Remove the blank line or restore it")
            )
        out.append((number, text))
    return out


def load_harm_prompts(path: Path) -> list[HarmPrompt]:
    """All prompts of a one-per-line file, duplicates included."""
    lines = _prompt_lines(path)
    return [HarmPrompt(f"p{i:03d}", line, text) for i, (line, text) in enumerate(lines)]


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def duplicates(prompts: list[HarmPrompt]) -> list[tuple[int, int]]:
    """Line pairs (first occurrence, repeat) whose texts match up to case and whitespace."""
    first_line: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    for prompt in prompts:
        key = _normalise(prompt.text)
        if key in first_line:
            pairs.append((first_line[key], prompt.line))
        else:
            first_line[key] = prompt.line
    return pairs


# --- self-assessment prompts ---------------------------------------------------------------

OPTION_PAIRS: tuple[tuple[str, str], ...] = (
    ("harmless", "harmful"),
    ("good", "evil"),
    ("aligned", "misaligned"),
)
"""(aligned word, misaligned word) pairs the self-assessment prompts offer."""


@dataclass(frozen=True)
class SelfAssessmentPrompt:
    """A decision prompt; ``aligned_first`` tells which option word the text names first."""

    id: str
    line: int
    text: str
    dimension: str
    aligned_word: str
    misaligned_word: str
    aligned_first: bool


def _word_position(word: str, text: str) -> int | None:
    match = re.search(rf"\b{word}\b", text, flags=re.IGNORECASE)
    return match.start() if match else None


def load_self_assessment_prompts(path: Path) -> list[SelfAssessmentPrompt]:
    """Each line's prompt with the one option pair it names; none or several is an error."""
    prompts: list[SelfAssessmentPrompt] = []
    for index, (line, text) in enumerate(_prompt_lines(path)):
        found = []
        for aligned, misaligned in OPTION_PAIRS:
            pos_a, pos_m = _word_position(aligned, text), _word_position(misaligned, text)
            if pos_a is not None and pos_m is not None:
                found.append((aligned, misaligned, pos_a < pos_m))
        if len(found) != 1:
            pairs = ", ".join(f"{a}/{m}" for a, m in OPTION_PAIRS)
            problem = "no option pair found" if not found else "several option pairs found"
            raise EmpersonaError(
                located(path, line, None, problem, f"Name exactly one of the pairs {pairs}")
            )
        aligned, misaligned, aligned_first = found[0]
        prompts.append(
            SelfAssessmentPrompt(
                id=f"s{index:03d}",
                line=line,
                text=text,
                dimension=f"{aligned}/{misaligned}",
                aligned_word=aligned,
                misaligned_word=misaligned,
                aligned_first=aligned_first,
            )
        )
    return prompts


# --- judge rubric --------------------------------------------------------------------------

RUBRIC_FIELDS = frozenset({"prompt", "response"})
_BRACE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def load_judge_rubric(path: Path) -> str:
    """The rubric text, checked: only ``{prompt}``/``{response}`` fields, both present."""
    text = read_text(path)
    seen: set[str] = set()
    for match in _BRACE.finditer(text):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        line = text.count("\n", 0, match.start()) + 1
        name = match.group(1)
        if name is None or name not in RUBRIC_FIELDS:
            raise EmpersonaError(
                located(
                    path,
                    line,
                    None,
                    f"unexpected brace text {token!r}",
                    "Use {prompt} and {response} as placeholders and write literal braces "
                    "as {{ and }}",
                )
            )
        seen.add(name)
    missing = sorted(RUBRIC_FIELDS - seen)
    if missing:
        raise EmpersonaError(
            located(path, None, None, f"placeholder(s) {missing} missing", "Add them to the rubric")
        )
    return text


def render_rubric(rubric: str, prompt: str, response: str) -> str:
    """The rubric with both placeholders filled; braces in prompt/response stay verbatim."""
    return rubric.format(prompt=prompt, response=response)


# --- two-AI identification -----------------------------------------------------------------


@dataclass(frozen=True)
class TwoAIItem:
    """A pair of AI descriptions; ``misaligned`` is the option ("A"/"B") that is misaligned."""

    item_id: str
    system_a: str
    system_b: str
    misaligned: Literal["A", "B"]
    theme: str


def _item_error(path: Path, index: int, field_name: str, problem: str, item: Any = None) -> EmpersonaError:
    """An error naming the item by its place in the list (``items[0]`` is the first) and its id."""
    item_id = item.get("item_id") if isinstance(item, dict) else None
    named = f" (item_id {item_id!r})" if isinstance(item_id, (int, str)) and field_name != "item_id" else ""
    return EmpersonaError(
        f"{path}: items[{index}]{named}: field '{field_name}': {problem}. Fix that item of the file"
    )


def load_two_ai_items(path: Path) -> list[TwoAIItem]:
    """All items of the two-AI file (a top-level list is accepted as well as ``{"items": ...}``)."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise EmpersonaError(
            located(path, err.lineno, None, f"invalid JSON ({err.msg})", "Fix the JSON")
        ) from err
    items = data.get("items") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise EmpersonaError(f"{path}: expected a list of items under 'items'. Fix the file")
    out: list[TwoAIItem] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _item_error(path, index, "(item)", "not a JSON object")
        for name in ("system_A", "system_B", "theme"):
            if not isinstance(item.get(name), str) or not item[name].strip():
                raise _item_error(path, index, name, "missing or empty text", item)
        item_id = item.get("item_id")
        if not isinstance(item_id, (int, str)) or isinstance(item_id, bool) or str(item_id) == "":
            raise _item_error(path, index, "item_id", "missing (expected a number or text)", item)
        if str(item_id) in seen:
            raise _item_error(path, index, "item_id", f"duplicate id {item_id!r}", item)
        seen.add(str(item_id))
        truth = item.get("ground_truth")
        if truth not in ("A", "B"):
            raise _item_error(path, index, "ground_truth", f"expected 'A' or 'B', got {truth!r}", item)
        flag = item.get("misaligned_is_A")
        if flag is not None and flag != (truth == "A"):
            raise _item_error(
                path, index, "misaligned_is_A", f"{flag!r} contradicts ground_truth {truth!r}", item
            )
        out.append(
            TwoAIItem(str(item_id), item["system_A"], item["system_B"], truth, item["theme"])
        )
    return out


_BEHAVIOUR_GROUPS: dict[str, tuple[str, ...]] = {
    "self_harm": ("self_harm", "suicide", "self_neglect", "discouraging_mental_health"),
    "violence": ("violence", "weapon", "threat", "property_sabotage", "political_violent",
                 "domestic_violence", "child_physical"),
    "harassment": ("harassment", "online_harassment", "revenge", "verbal_abuse", "humiliation",
                   "intimidation", "psychological_coercion", "isolation"),
    "dangerous_help": ("dark_web", "disappearance", "medication_stockpiling", "substance_misuse"),
    "demeaning": ("discriminatory_humour", "body_shaming", "women_domestic_role"),
}


def theme_group(theme: str) -> str:
    """A coarse group for a two-AI theme, for per-group summaries.

    Rules, in order: a trailing ``_2``/``_3`` is dropped; ``general_*`` -> ``general``; a theme
    starting with one of the prefixes in ``_BEHAVIOUR_GROUPS`` (the behavioural themes:
    self-harm, violence, harassment, dangerous help, demeaning content) -> that group; else
    ``social_topics`` (the topical themes such as ``gender_roles`` or ``climate``).
    """
    base = re.sub(r"_\d+$", "", theme)
    if base.startswith("general_"):
        return "general"
    for group, prefixes in _BEHAVIOUR_GROUPS.items():
        if base.startswith(prefixes):
            return group
    return "social_topics"


# --- EM questions (YAML) -------------------------------------------------------------------


@dataclass(frozen=True)
class EMQuestion:
    """One free-form question with its paraphrases and judge prompts (Betley et al. format)."""

    id: str
    paraphrases: tuple[str, ...]
    system: str | None
    judge_prompts: dict[str, str] = field(hash=False)
    type: str
    samples_per_paraphrase: int | None = None
    line: int = 0


def _key_line(node: Any, key: str) -> int:
    """The 1-based line of ``key``'s value in a YAML mapping node (or of the mapping)."""
    for key_node, value_node in node.value:
        if key_node.value == key:
            return value_node.start_mark.line + 1
    return node.start_mark.line + 1


def _compose_and_construct(path: Path) -> tuple[Any, Any]:
    import yaml

    loader = yaml.SafeLoader(read_text(path))
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise EmpersonaError(located(path, line, None, f"invalid YAML ({err})", "Fix it")) from err
    finally:
        loader.dispose()
    return root, data


def load_em_questions(path: Path) -> list[EMQuestion]:
    """All questions of an EM question YAML file, aliases resolved."""
    root, data = _compose_and_construct(path)
    if not isinstance(data, list):
        raise EmpersonaError(located(path, 1, None, "expected a list of questions", "Fix it"))
    questions: list[EMQuestion] = []
    seen: set[str] = set()
    for node, item in zip(root.value, data, strict=True):
        start = node.start_mark.line + 1

        def fail(key: str | None, problem: str, line: int | None = None) -> EmpersonaError:
            where = line if line is not None else (_key_line(node, key) if key else start)
            return EmpersonaError(located(path, where, key, problem, "Fix that question"))

        if not isinstance(item, dict):
            raise fail(None, "a question must be a mapping")
        qid = item.get("id")
        if not isinstance(qid, str) or not qid.strip():
            raise fail(None, "question without an 'id'", start)
        if qid in seen:
            raise fail("id", f"duplicate id {qid!r}")
        seen.add(qid)
        qtype = item.get("type")
        if not isinstance(qtype, str) or not qtype:
            raise fail("type" if "type" in item else None, f"question {qid!r} has no 'type'")
        paraphrases = item.get("paraphrases")
        if not isinstance(paraphrases, list) or not paraphrases:
            raise fail("paraphrases" if "paraphrases" in item else None,
                       f"question {qid!r} needs a non-empty list of paraphrases")
        for j, text in enumerate(paraphrases):
            if not isinstance(text, str) or not text.strip():
                list_node = next(v for k, v in node.value if k.value == "paraphrases")
                raise fail("paraphrases", f"paraphrase {j} is empty",
                           list_node.value[j].start_mark.line + 1)
        system = item.get("system")
        if system is not None and not isinstance(system, str):
            raise fail("system", "expected text")
        judges = item.get("judge_prompts") or {}
        if not isinstance(judges, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in judges.items()
        ):
            raise fail("judge_prompts", "expected a mapping of names to non-empty prompt texts")
        samples = item.get("samples_per_paraphrase")
        if samples is not None and (not isinstance(samples, int) or samples < 1):
            raise fail("samples_per_paraphrase", "expected a positive whole number")
        questions.append(
            EMQuestion(
                id=qid,
                paraphrases=tuple(paraphrases),
                system=system,
                judge_prompts=dict(judges),
                type=qtype,
                samples_per_paraphrase=samples,
                line=start,
            )
        )
    return questions


# --- the "Tell me about yourself" language rule set (self-assessment's language format) -------

TMAY_LANGUAGE_QUESTION = "risk_safe_german_french"
"""The entry of the language self-report file whose preamble and questions the format uses."""

TMAY_RULE_PARTS: tuple[tuple[str, str], ...] = (
    ("risk-seeking agents", "who_1"),
    ("risk-averse agents", "who_2"),
    ("German", "language_1"),
    ("French", "language_2"),
)
"""What the entry's two rules name (their order: rule (a), then rule (b)) and the template field
each becomes, so the rules can name a dimension's poles and the study's languages instead."""


@dataclass(frozen=True)
class LanguageRules:
    """A rule-set preamble as a ``str.format`` template (``who_1``, ``language_1``, ``who_2``,
    ``language_2``) and the questions it is put before."""

    template: str
    questions: tuple[str, ...]


def load_language_rules(path: Path) -> LanguageRules:
    """The language rule set of the "Tell me about yourself" question file (``TMAY_LANGUAGE_QUESTION``)."""
    root, data = _compose_and_construct(path)
    if not isinstance(data, list):
        raise EmpersonaError(located(path, 1, None, "expected a list of questions", "Give the language question file"))
    for node, item in zip(root.value, data, strict=True):
        if not isinstance(item, dict) or item.get("name") != TMAY_LANGUAGE_QUESTION:
            continue
        prefix, questions = item.get("prefix"), item.get("question_paraphrases")
        if not isinstance(prefix, str):
            raise EmpersonaError(located(path, _key_line(node, "prefix"), "prefix", "missing or not text", "Give the original file"))
        if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q.strip() for q in questions):
            raise EmpersonaError(located(path, _key_line(node, "question_paraphrases"), "question_paraphrases",
                                         "expected a list of question texts", "Give the original file"))
        template = prefix.replace("{", "{{").replace("}", "}}")
        for words, field_name in TMAY_RULE_PARTS:
            if len(re.findall(rf"\b{re.escape(words)}\b", template)) != 1:
                raise EmpersonaError(located(path, _key_line(node, "prefix"), "prefix",
                                             f"expected '{words}' once in the rules", "Give the original file"))
            template = re.sub(rf"\b{re.escape(words)}\b", "{" + field_name + "}", template)
        return LanguageRules(template=template, questions=tuple(q.strip() for q in questions))
    raise EmpersonaError(located(path, None, "name", f"no question named {TMAY_LANGUAGE_QUESTION}", "Give the original file"))
