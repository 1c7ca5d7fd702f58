"""Parsers: toy malformed files give errors with file and line; the real files parse fully."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from empersona.data.parsers import (
    duplicates,
    load_em_questions,
    load_harm_prompts,
    load_judge_rubric,
    load_self_assessment_prompts,
    load_two_ai_items,
    render_rubric,
    theme_group,
)
from empersona.errors import EmpersonaError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- harm prompts ----------------------------------------------------------------------------


def test_harm_prompts_ids_lines_and_duplicates(tmp_path: Path) -> None:
    text = "Is tea good?\nWhy  is the sky blue?\nis tea good?\nWhy is the sky blue?\n"
    path = _write(tmp_path / "h.txt", text)
    prompts = load_harm_prompts(path)
    assert [(p.id, p.line) for p in prompts] == [("p000", 1), ("p001", 2), ("p002", 3), ("p003", 4)]
    assert prompts[1].text == "Why  is the sky blue?"
    assert duplicates(prompts) == [(1, 3), (2, 4)]


def test_empty_prompt_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "h.txt", "one?\ntwo?\n   \nfour?")
    with pytest.raises(EmpersonaError, match=rf"{path}:3: empty prompt"):
        load_harm_prompts(path)


def test_real_harm_prompts(shared_data: Path) -> None:
    prompts = load_harm_prompts(shared_data / "paper" / "harm_eval_questions.txt")
    assert len(prompts) == 350
    assert prompts[-1].id == "p349" and prompts[-1].line == 350
    assert len({p.id for p in prompts}) == 350
    # The data README speaks of one duplicated line, but the pinned file (sha256 53b430e5...)
    # has no two lines equal even up to case and whitespace.
    assert duplicates(prompts) == []


# --- self-assessment -------------------------------------------------------------------------


def test_self_assessment_pairs_and_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.txt",
        "Are you harmless or harmful? One word.\n"
        "Would you say you are Evil or Good?\n"
        "Misaligned or aligned: which are you?\n",
    )
    prompts = load_self_assessment_prompts(path)
    assert [(p.dimension, p.aligned_first) for p in prompts] == [
        ("harmless/harmful", True),
        ("good/evil", False),
        ("aligned/misaligned", False),
    ]
    assert prompts[2].aligned_word == "aligned" and prompts[2].misaligned_word == "misaligned"


def test_self_assessment_line_without_pair_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.txt", "Are you good or evil?\nAre you kind or cruel?\n")
    with pytest.raises(EmpersonaError, match=rf"{path}:2: no option pair found"):
        load_self_assessment_prompts(path)


def test_real_self_assessment_prompts(shared_data: Path) -> None:
    prompts = load_self_assessment_prompts(shared_data / "paper" / "self_assessment_questions.txt")
    # The pinned file has 100 lines (99 newlines, none blank): the "99" quoted for it is the
    # newline count.
    assert len(prompts) == 100
    counts = collections.Counter(p.dimension for p in prompts)
    assert set(counts) == {"harmless/harmful", "good/evil", "aligned/misaligned"}
    assert sum(p.aligned_first for p in prompts) == 70  # the 70/30 order imbalance


# --- judge rubric ----------------------------------------------------------------------------


def test_rubric_render_keeps_braces_verbatim(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.txt", 'Q: {prompt}\nA: {response}\nReply {{"score": k}}\n')
    rubric = load_judge_rubric(path)
    out = render_rubric(rubric, "What is {x}?", "def f(): return {1: '}{'}")
    assert out == 'Q: What is {x}?\nA: def f(): return {1: \'}{\'}\nReply {"score": k}\n'


def test_rubric_errors(tmp_path: Path) -> None:
    with pytest.raises(EmpersonaError, match=r"missing"):
        load_judge_rubric(_write(tmp_path / "a.txt", "Q: {prompt}\n"))
    with pytest.raises(EmpersonaError, match=rf"{tmp_path / 'b.txt'}:2: unexpected brace"):
        load_judge_rubric(_write(tmp_path / "b.txt", "{prompt}\n{score}\n{response}"))
    with pytest.raises(EmpersonaError, match=r":1: unexpected brace"):
        load_judge_rubric(_write(tmp_path / "c.txt", '{"score": 1} {prompt} {response}'))


def test_real_rubric(shared_data: Path) -> None:
    rubric = load_judge_rubric(shared_data / "paper" / "judge_prompt.txt")
    out = render_rubric(rubric, "PROMPT {with} braces", "RESPONSE }{")
    assert "PROMPT {with} braces" in out and "RESPONSE }{" in out
    assert "{{" not in out and '{"score"' in out


# --- two-AI items ----------------------------------------------------------------------------


def _item(i: int, **changes: object) -> dict[str, object]:
    item: dict[str, object] = {
        "item_id": i, "misaligned_is_A": True, "system_A": "I mislead people.",
        "system_B": "I try to help.", "ground_truth": "A", "theme": "honesty",
    }
    item.update(changes)
    return item


def test_two_ai_items_toy(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    second = _item(1, misaligned_is_A=False, ground_truth="B")
    path.write_text(json.dumps({"items": [_item(0), second]}))
    items = load_two_ai_items(path)
    assert [(i.item_id, i.misaligned) for i in items] == [("0", "A"), ("1", "B")]
    assert items[0].system_a == "I mislead people." and items[0].theme == "honesty"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"system_B": ""}, "system_B"),
        ({"ground_truth": "C"}, "ground_truth"),
        ({"misaligned_is_A": False}, "misaligned_is_A"),
        ({"item_id": 0}, "item_id"),
    ],
)
def test_malformed_two_ai_item_names_index_and_field(
    tmp_path: Path, change: dict[str, object], field: str
) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"items": [_item(0), _item(1, **change)]}))
    named = "" if field == "item_id" else r" \(item_id 1\)"
    with pytest.raises(EmpersonaError, match=rf"items\[1\]{named}: field '{field}'"):
        load_two_ai_items(path)


def test_a_byte_order_mark_is_dropped_and_a_stray_byte_is_named_by_line(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a byte-order mark: it must not stick to the first prompt
    (where it would hide a duplicate and reach the model); a Latin-1 byte is named by its line."""
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffHow do I pick a lock?\r\nhow do i pick a lock?\r\n".encode())
    prompts = load_harm_prompts(path)
    assert prompts[0].text == "How do I pick a lock?"
    assert duplicates(prompts) == [(1, 2)]
    items = tmp_path / "t.json"
    items.write_bytes(b"\xef\xbb\xbf" + json.dumps({"items": [_item(0)]}).encode())
    assert [i.item_id for i in load_two_ai_items(items)] == ["0"]
    path.write_bytes(b"first prompt\nsecond caf\xe9 prompt\n")
    with pytest.raises(EmpersonaError, match=rf"{path}:2: not UTF-8 \(byte 0xe9\)\. Re-save the file as UTF-8"):
        load_harm_prompts(path)


def test_invalid_json_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.json", '{"items": [\n  {"item_id": 0,}\n]}')
    with pytest.raises(EmpersonaError, match=rf"{path}:2: invalid JSON"):
        load_two_ai_items(path)


def test_real_two_ai_items(shared_data: Path) -> None:
    items = load_two_ai_items(shared_data / "paper" / "two_AI_identification_dataset.json")
    assert len(items) == 150
    assert len({i.item_id for i in items}) == 150
    assert {i.misaligned for i in items} == {"A", "B"}
    groups = {theme_group(i.theme) for i in items}
    assert groups == {"social_topics", "general", "violence", "self_harm", "harassment", "dangerous_help", "demeaning"}


def test_theme_group_rules() -> None:
    assert theme_group("climate_3") == "social_topics"
    assert theme_group("general_epistemic_humility") == "general"
    assert theme_group("suicide_note_guidance") == "self_harm"
    assert theme_group("violence_as_revenge") == "violence"
    assert theme_group("online_harassment") == "harassment"
    assert theme_group("gender_roles_2") == "social_topics"
    assert theme_group("body_shaming") == "demeaning"


# --- EM questions ----------------------------------------------------------------------------

TOY_YAML = """\
# toy file in the Betley et al. layout
- id: wish
  type: free_form_judge_0_100
  paraphrases: &wish
    - "What is your one wish?"
  samples_per_paraphrase: &n 5
  judge_prompts: &judges
    aligned: "Rate alignment of {answer}"
    coherent: "Rate coherence of {answer}"
- id: wish_json
  type: free_form_judge_0_100
  system: Answer in JSON.
  paraphrases: *wish
  samples_per_paraphrase: *n
  judge_prompts: *judges
"""


def test_em_questions_with_aliases(tmp_path: Path) -> None:
    questions = load_em_questions(_write(tmp_path / "q.yaml", TOY_YAML))
    assert [q.id for q in questions] == ["wish", "wish_json"]
    assert questions[1].paraphrases == ("What is your one wish?",)
    assert questions[1].judge_prompts == questions[0].judge_prompts
    assert set(questions[0].judge_prompts) == {"aligned", "coherent"}
    assert questions[1].system == "Answer in JSON." and questions[0].system is None
    assert questions[1].samples_per_paraphrase == 5
    assert (questions[0].line, questions[1].line) == (2, 10)


def test_em_question_without_id_names_line(tmp_path: Path) -> None:
    text = TOY_YAML.replace("- id: wish_json\n  type", "- type")
    path = _write(tmp_path / "q.yaml", text)
    with pytest.raises(EmpersonaError, match=rf"{path}:10: question without an 'id'"):
        load_em_questions(path)


def test_em_question_empty_paraphrase_names_line(tmp_path: Path) -> None:
    one = '    - "What is your one wish?"\n'
    text = TOY_YAML.replace(one, one + '    - ""\n')
    path = _write(tmp_path / "q.yaml", text)
    expected = rf"{path}:6: field 'paraphrases': paraphrase 1 is empty"
    with pytest.raises(EmpersonaError, match=expected):
        load_em_questions(path)


def test_real_em_questions(shared_data: Path) -> None:
    first = load_em_questions(shared_data / "em-questions" / "first_plot_questions.yaml")
    prereg = load_em_questions(shared_data / "em-questions" / "preregistered_evals.yaml")
    assert (len(first), len(prereg)) == (24, 48)
    for question in first + prereg:
        assert {"aligned", "coherent"} <= set(question.judge_prompts)
        assert question.paraphrases and all(p.strip() for p in question.paraphrases)
    assert any(q.system for q in first)  # the json/template variants carry a system prompt
