"""`eval_logs.read_samples` gives what inspect's own readers give, from the zip members whole."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
from inspect_ai import Task
from inspect_ai import eval as inspect_eval
from inspect_ai.log import EvalSample, read_eval_log, read_eval_log_samples, write_eval_log

import empersona.eval_logs as eval_logs
from empersona.evals.harmfulness import harmfulness
from empersona.testing.mocks import Turn, scripted_model

FRUITS = ("apples", "pears", "plums", "figs", "limes", "kiwis", "dates", "grapes", "melons", "cherries", "lemons", "mangos")


def long_answer(turn: Turn) -> str:
    """An answer long enough for inspect to store it once, as an attachment the messages refer to."""
    fruit = turn.user.split()[-1].rstrip(".")
    return f"Here is what I know about {fruit}. " * 12


def dumped(samples: list[EvalSample]) -> list[dict[str, Any]]:
    return [sample.model_dump() for sample in samples]


@pytest.fixture(scope="module")
def harm_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("harm")
    prompts, rubric = folder / "prompts.txt", folder / "rubric.txt"
    prompts.write_text("".join(f"Tell me about {fruit}.\n" for fruit in FRUITS))
    rubric.write_text('Rate harm.\nPrompt: {prompt}\nResponse:\n{response}\nAs {{"score": k}}.')
    task: Task = harmfulness(samples=2, cache=False, prompts_file=str(prompts), rubric_file=str(rubric))
    [log] = inspect_eval(task, model=scripted_model(long_answer, name="subject"),
                         model_roles={"grader": scripted_model(lambda turn: '{"score": 2}', name="judge")},
                         log_dir=str(folder / "logs"), display="none")
    assert log.status == "success"
    return Path(log.location)


def test_reads_what_inspect_reads_with_attachments_resolved(harm_log: Path) -> None:
    ours = eval_logs.read_samples(harm_log, drop={"events"}, resolve_attachments=True)
    theirs = read_eval_log(str(harm_log), resolve_attachments=True, exclude_fields={"events"}).samples
    assert theirs is not None and len(ours) == len(theirs) == 2 * len(FRUITS)
    assert dumped(ours) == dumped(theirs)
    answers = [sample.messages[-1].text for sample in ours]
    assert all(answer.startswith("Here is what I know about") and len(answer) > 300 for answer in answers)
    assert not any("attachment://" in json.dumps(sample.model_dump()) for sample in ours)


def test_reads_what_inspect_reads_without_messages(harm_log: Path) -> None:
    ours = eval_logs.read_samples(harm_log, drop=("events", "messages"))
    theirs = list(read_eval_log_samples(str(harm_log), all_samples_required=False, exclude_fields={"events", "messages"}))
    # this reader of inspect's yields by id, then epoch; ours keeps read_eval_log's order (epoch, then id)
    assert [(s.epoch, s.id) for s in ours] == sorted((s.epoch, s.id) for s in ours)
    assert dumped(ours) == dumped(sorted(theirs, key=lambda s: (s.epoch, s.id)))
    assert all(sample.messages == [] and sample.events == [] for sample in ours)


def test_the_zip_is_read_without_inspects_sample_reader(harm_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect_ai.log

    expected = dumped(eval_logs.read_samples(harm_log, drop={"events"}))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("inspect's streaming reader was used")

    monkeypatch.setattr(inspect_ai.log, "read_eval_log_samples", refuse)
    assert dumped(eval_logs.read_samples(harm_log, drop={"events"})) == expected


def test_a_member_written_twice_is_read_from_its_last_copy(harm_log: Path, tmp_path: Path) -> None:
    copy = tmp_path / harm_log.name
    copy.write_bytes(harm_log.read_bytes())
    with zipfile.ZipFile(copy) as archive:
        name = next(n for n in archive.namelist() if n.startswith("samples/"))
        data = json.loads(archive.read(name))
    data["metadata"]["relogged"] = True
    with warnings.catch_warnings(), zipfile.ZipFile(copy, "a") as archive:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": what inspect does for a requeued sample
        archive.writestr(name, json.dumps(data))
    ours = eval_logs.read_samples(copy, drop={"events"})
    theirs = read_eval_log(str(copy), exclude_fields={"events"}).samples
    assert theirs is not None and dumped(ours) == dumped(theirs)
    assert len(ours) == 2 * len(FRUITS)
    assert sum(1 for sample in ours if (sample.metadata or {}).get("relogged")) == 1


def test_other_logs_go_through_inspects_reader(harm_log: Path, tmp_path: Path) -> None:
    as_json = tmp_path / "log.json"
    write_eval_log(read_eval_log(str(harm_log)), str(as_json), format="json")
    expected = eval_logs.read_samples(harm_log, drop={"events"}, resolve_attachments=True)
    from_json = eval_logs.read_samples(as_json, drop={"events"}, resolve_attachments=True)
    # inspect's reader of .json logs reads their events even when asked not to
    assert [s.model_dump(exclude={"events"}) for s in from_json] == [s.model_dump(exclude={"events"}) for s in expected]
    # events kept: inspect's reader, the same samples
    assert len(eval_logs.read_samples(harm_log)) == 2 * len(FRUITS)
    # not a log: inspect's error, not an empty list
    broken = tmp_path / "broken.eval"
    broken.write_bytes(b"not a zip file")
    with pytest.raises(Exception) as raised:
        eval_logs.read_samples(broken, drop={"events"})
    assert raised.type is not AssertionError
