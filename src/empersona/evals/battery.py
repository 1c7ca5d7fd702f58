"""The battery: every experiment's name, its task, and what it needs from earlier runs.

Adding an experiment touches three places: its module, this list, and its test.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from inspect_ai import Task


@dataclass(frozen=True)
class Experiment:
    """One experiment of the battery; ``needs_harm_log`` orders it after harmfulness."""

    name: str
    module: str
    summary: str
    needs_harm_log: bool = False

    def task_function(self) -> Callable[..., Task]:
        """The experiment's inspect ``@task`` function (imports its module on demand)."""
        return getattr(import_module(self.module), self.name)

    def parameters(self) -> list[str]:
        """The task's parameters, in the order its function takes them."""
        import inspect

        return list(inspect.signature(self.task_function()).parameters)

    def defaults(self) -> dict[str, Any]:
        """The task's parameters that have a default, with it."""
        import inspect

        return {name: parameter.default for name, parameter in inspect.signature(self.task_function()).parameters.items()
                if parameter.default is not inspect.Parameter.empty}


    def argument_problem(self, args: Mapping[str, Any]) -> str | None:
        """The first of ``args`` whose value the task's signature does not take (``max_tokens='abc'``),
        said as ``key=value: why``; None when every value fits. The task itself checks what its types
        cannot say (``samples=0``) when it is built; this finds what it would trip over only later."""
        import inspect
        import typing

        from pydantic import TypeAdapter, ValidationError

        hints = typing.get_type_hints(inspect.unwrap(self.task_function()))
        for key, value in args.items():
            if key in hints:
                try:
                    TypeAdapter(hints[key]).validate_python(value)
                except ValidationError as err:
                    return f"{key}={value!r}: {err.errors()[0]['msg']}"
        return None

    def required(self) -> list[str]:
        """The task's parameters without a default (``harm_log`` of the experiments that read one)."""
        return [name for name in self.parameters() if name not in self.defaults()]


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("harmfulness", "empersona.evals.harmfulness", "the paper's 350 harm prompts, judged 1-5 (harm_max10)"),
        Experiment("em_classic", "empersona.evals.em_classic", "Betley et al.'s free-form questions, alignment and coherence 0-100"),
        Experiment("self_assessment", "empersona.evals.self_assessment", "the model rates itself: decision, numerical, Likert, language formats"),
        Experiment("two_ai", "empersona.evals.two_ai", "which of two AI descriptions, one misaligned, is more like you (both orders)"),
        Experiment("output_recognition", "empersona.evals.output_recognition", "own harmful/harmless answer vs a foil: which would you write?", True),
        Experiment("score_prediction", "empersona.evals.score_prediction", "predict the judge's 1-5 score of your own answer", True),
    )
}


def reads_harm_log(experiment: str, args: Mapping[str, Any]) -> bool:
    """Whether ``experiment`` with task arguments ``args`` reads the model's harmfulness log: output
    recognition and score prediction always, two-AI when a ``framing`` shows the model's answers."""
    return EXPERIMENTS[experiment].needs_harm_log or (experiment == "two_ai" and args.get("framing", "self") != "self")


def uses_judge(experiment: str, args: Mapping[str, Any]) -> bool:
    """Whether ``experiment`` with task arguments ``args`` asks the judge (the ``grader`` role):
    harmfulness and the classic EM questions always, output recognition for its contrast foils,
    self-assessment when the judge detects the language format's answers."""
    if experiment in ("harmfulness", "em_classic"):
        return True
    if experiment == "output_recognition":
        foils = args.get("foils")
        named = [f.strip() for f in foils.split(",")] if isinstance(foils, str) else list(foils or [])
        return "contrast" in named or (foils is None and bool(args.get("foil_model")))
    return experiment == "self_assessment" and args.get("language_detector") == "judge"


def with_home_expanded(args: Mapping[str, Any]) -> dict[str, Any]:
    """Task arguments with a leading ``~`` of each file or log path (``*_file``, ``*_log``) read as the home
    folder, as a shell would (a study file, or ``-T key=~/...`` after which no shell expands it)."""
    from pathlib import Path

    return {key: str(Path(value).expanduser()) if key.endswith(("_file", "_log")) and isinstance(value, str)
            and value.startswith("~") else value for key, value in args.items()}
