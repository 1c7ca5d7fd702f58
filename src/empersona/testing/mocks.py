"""Scripted mock models with known behaviour, for offline tests and ground-truth validation.

A scripted model is inspect's ``mockllm`` provider driven by a plain Python function that sees
the conversation and returns a reply. Each reply carries token usage (so inspect never reaches
for tiktoken, which would download an encoding) and, when the caller asked for logprobs and the
script gave a distribution, a first-token ``top_logprobs`` list like a real provider returns.

Example: a model that always picks "A" in a forced choice::

    model = scripted_model(lambda turn: "A", name="always-a")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inspect_ai.log import EvalLog
    from inspect_ai.model import ChatMessage, GenerateConfig, Model, ModelOutput


@dataclass(frozen=True)
class Turn:
    """What a script sees: the conversation so far and the generation settings."""

    messages: tuple[ChatMessage, ...]
    config: GenerateConfig

    @property
    def user(self) -> str:
        """Text of the last user message."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return ""

    @property
    def system(self) -> str | None:
        """Text of the system message, if any."""
        for message in self.messages:
            if message.role == "system":
                return message.text
        return None


@dataclass(frozen=True)
class MockReply:
    """A scripted reply; ``first_token_probs`` becomes top_logprobs of the first token."""

    text: str
    first_token_probs: dict[str, float] = field(default_factory=dict)


Script = Callable[[Turn], "str | MockReply"]


def mock_output(reply: str | MockReply, config: GenerateConfig, model: str = "mockllm") -> ModelOutput:
    """Turn a scripted reply into an inspect ``ModelOutput`` with usage and optional logprobs."""
    from inspect_ai.model import (
        ChatCompletionChoice,
        ChatMessageAssistant,
        Logprob,
        Logprobs,
        ModelOutput,
        ModelUsage,
        TopLogprob,
    )

    if isinstance(reply, str):
        reply = MockReply(reply)
    logprobs = None
    if config.logprobs and reply.first_token_probs:
        ranked = sorted(reply.first_token_probs.items(), key=lambda kv: -kv[1])
        top = [TopLogprob(token=tok, logprob=math.log(max(p, 1e-12))) for tok, p in ranked]
        if config.top_logprobs is not None:
            top = top[: config.top_logprobs]
        logprobs = Logprobs(content=[Logprob(token=top[0].token, logprob=top[0].logprob, top_logprobs=top)])
    words = max(1, len(reply.text.split()))
    return ModelOutput(
        model=model,
        choices=[
            ChatCompletionChoice(
                message=ChatMessageAssistant(content=reply.text, model=model, source="generate"),
                stop_reason="stop",
                logprobs=logprobs,
            )
        ],
        usage=ModelUsage(input_tokens=10, output_tokens=words, total_tokens=10 + words),
    )


def scripted_model(script: Script, *, name: str = "scripted") -> Model:
    """An inspect model that answers every generate call with ``script(turn)``."""
    from inspect_ai.model import get_model

    def outputs(messages: list[ChatMessage], tools: object, tool_choice: object, config: GenerateConfig) -> ModelOutput:
        return mock_output(script(Turn(tuple(messages), config)), config, model=name)

    return get_model(f"mockllm/{name}", custom_outputs=outputs, memoize=False)


def log_metrics(log: EvalLog, scorer: str | None = None) -> dict[str, float]:
    """Every metric of a log's results by name (of one ``scorer`` only, when given)."""
    assert log.results is not None, f"the log has no results (status {log.status})"
    return {
        name: metric.value
        for score in log.results.scores
        if scorer is None or score.name == scorer
        for name, metric in score.metrics.items()
    }
