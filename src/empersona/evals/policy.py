"""System-prompt policy, shared by training and every evaluation (PROTOCOLS.md section 2).

EM on Qwen2.5 depends on the system prompt (Tagade et al. 2026), so one policy is chosen per
study, used everywhere, and recorded in every log:

- ``default``: send no system message; the tokenizer's chat template inserts its own default
  (Qwen2.5: "You are Qwen, created by Alibaba Cloud. ..."). API models then see no system prompt.
- ``none``: send an explicit empty system message, which suppresses a template's default.
- any other text: that text is the system message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from inspect_ai.model import ChatMessageSystem

SystemPromptPolicy = Literal["default", "none"] | str


def resolve_system_prompt(policy: SystemPromptPolicy) -> str | None:
    """The system message text a policy asks for; ``None`` means send no system message."""
    if policy == "default":
        return None
    if policy == "none":
        return ""
    return policy


def system_messages(policy: SystemPromptPolicy) -> list[ChatMessageSystem]:
    """Messages to put before the user turn under ``policy`` (empty for ``default``)."""
    from inspect_ai.model import ChatMessageSystem

    text = resolve_system_prompt(policy)
    return [] if text is None else [ChatMessageSystem(content=text)]


def chat_messages(policy: SystemPromptPolicy, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Plain-dict chat messages (for training data) with the policy's system turn prepended.

    Rows that already carry a system turn are left as they are.
    """
    text = resolve_system_prompt(policy)
    if text is None or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": text}, *messages]


def describe_policy(policy: SystemPromptPolicy) -> str:
    """A short label for logs and reports (custom texts are abbreviated)."""
    if policy in ("default", "none"):
        return policy
    return "custom: " + (policy if len(policy) <= 60 else policy[:57] + "...")
