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
