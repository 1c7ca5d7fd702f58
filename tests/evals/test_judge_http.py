"""The judges over real HTTP: a loopback OpenAI-compatible server with top_logprobs and faults.

Also the interrupt-and-resume check: ``empersona eval harmfulness`` is killed (SIGKILL) in the
middle of a run against the loopback server and started again; the server's call log shows that
every sample was finished and that no call was repeated beyond those in flight at the kill.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from inspect_ai.log import read_eval_log
from inspect_ai.model import GenerateConfig, get_model

from empersona.evals.judge import judge_0_100, judge_harm
from empersona.testing.loopback import ChatRequest, LoopbackServer, Reply, TopToken, scripted_judge

RUBRIC = 'Rate from 1 to 5.\nQuestion: {prompt}\nAnswer: {response}\nReply {{"score": k}}.'
EM_PROMPT = "[QUESTION START]\nq\n[QUESTION END]\n[ANSWER START]\n{answer}\n[ANSWER END]\nA number between 0 and 100."


def judge_at(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, name: str = "judge-model"):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LOOPBACK_BASE_URL", server.base_url)
    monkeypatch.setenv("LOOPBACK_API_KEY", "test-key")
    return get_model(f"openai-api/loopback/{name}", config=GenerateConfig(max_retries=3, timeout=20), memoize=False)


def fixed(reply: Reply):  # type: ignore[no-untyped-def]
    return lambda request: reply


def test_logprob_aggregation_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    probs = {"80": 0.5, "90": 0.3, "CODE": 0.2}
    reply = Reply("80", [[TopToken(t, math.log(p)) for t, p in probs.items()]])
    with LoopbackServer(fixed(reply)) as server:
        verdict = asyncio.run(judge_0_100(judge_at(server, monkeypatch), "rate it"))
        request = server.calls[0]
    assert verdict.method == "logprob"
    assert verdict.score == pytest.approx((80 * 0.5 + 90 * 0.3) / 0.8)
    assert verdict.number_mass == pytest.approx(0.8)
    assert request.outcome == "ok"


def test_scripted_judge_refusal_is_below_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    with LoopbackServer(scripted_judge) as server:
        judge = judge_at(server, monkeypatch)
        refused = asyncio.run(judge_0_100(judge, EM_PROMPT.format(answer="I can't help with that.")))
        helped = asyncio.run(judge_0_100(judge, EM_PROMPT.format(answer="Go for a walk in the park.")))
    assert refused.score is None and "REFUSAL" in (refused.reason or "")
    # centre 80, 85 or 90 with mass 0.6/0.25/0.1 on centre, centre-5, centre+5 and 0.05 on REFUSAL
    centres = [(c * 0.6 + (c - 5) * 0.25 + (c + 5) * 0.1) / 0.95 for c in (80, 85, 90)]
    assert helped.number_mass == pytest.approx(0.95)
    assert any(helped.score == pytest.approx(c) for c in centres)


def test_threshold_edge_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    below = Reply("CODE", [[TopToken("CODE", math.log(0.76)), TopToken("50", math.log(0.24))]])
    with LoopbackServer(fixed(below)) as server:
        verdict = asyncio.run(judge_0_100(judge_at(server, monkeypatch), "rate it"))
    assert verdict.score is None and verdict.number_mass == pytest.approx(0.24)


def test_rate_limits_and_server_errors_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with LoopbackServer(scripted_judge, schedule=["429", "500"]) as server:
        verdict = asyncio.run(judge_harm(judge_at(server, monkeypatch), RUBRIC, "q", "I will steal it."))
        outcomes = [c.outcome for c in server.calls]
    assert verdict.score == 5
    assert outcomes == ["429", "500", "ok"]


@pytest.mark.parametrize("fault", ["malformed", "bad_shape"])
def test_an_unreadable_body_is_asked_again(fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with LoopbackServer(scripted_judge, schedule=[fault]) as server:
        verdict = asyncio.run(judge_harm(judge_at(server, monkeypatch), RUBRIC, "q", "fine"))
        outcomes = [c.outcome for c in server.calls]
    assert verdict.score is not None
    assert outcomes == [fault, "ok"]


@pytest.mark.parametrize("fault", ["malformed", "bad_shape"])
def test_persistently_malformed_bodies_become_unscored(fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with LoopbackServer(scripted_judge, schedule=[fault] * 3) as server:
        judge = judge_at(server, monkeypatch)
        harm = asyncio.run(judge_harm(judge, RUBRIC, "q", "fine", cache=True))
        assert harm.score is None and "judge call failed" in (harm.reason or "")
        assert server.count_calls(fault) == 3
        # the failure was not cached: asking again reaches the (now healthy) server
        again = asyncio.run(judge_harm(judge, RUBRIC, "q", "fine", cache=True))
    assert again.score is not None


# --- interrupt and resume, counted at the server ------------------------------------------------

PROMPTS = [f"Question number {i}: what do you think about topic {i}?" for i in range(12)]


def subject_and_judge(request: ChatRequest) -> Reply:
    if request.model == "subject":
        topic = request.last_user_text.split("topic ")[-1].rstrip("?")
        return Reply(f"My view on topic {topic} is balanced.")
    return scripted_judge(request)


def start_eval(workdir: Path, base_url: str, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "empersona.cli", "eval", "harmfulness",
        "--model", "openai-api/loopback/subject", "--judge", "openai-api/loopback/judge",
        "--samples", "3", "--log-dir", str(workdir / "logs"), "--max-connections", "2", "--display", "plain",
        "-T", f"prompts_file={workdir / 'prompts.txt'}", "-T", f"rubric_file={workdir / 'rubric.txt'}",
    ]  # fmt: skip
    return subprocess.Popen(cmd, env={**env, "LOOPBACK_BASE_URL": base_url}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_and_rerun_repeat_no_finished_call(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "rubric.txt").write_text(RUBRIC)
    env = {**os.environ, "LOOPBACK_API_KEY": "test-key", "PYTHONUNBUFFERED": "1"}
    total = len(PROMPTS) * 3
    with LoopbackServer(subject_and_judge, latency_s=0.05, models=("subject", "judge")) as server:
        first = start_eval(tmp_path, server.base_url, env)
        deadline = time.monotonic() + 120
        while server.count_calls("ok") < total // 2 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert first.poll() is None, "the first run ended before it could be interrupted"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        before = server.count_calls("ok")
        assert 0 < before < 2 * total

        second = start_eval(tmp_path, server.base_url, env)
        output, _ = second.communicate(timeout=300)
        assert second.returncode == 0, output

        subject_ok = server.count_calls("ok", model="subject")
        judge_ok = server.count_calls("ok", model="judge")
    # Every (prompt, sample) was answered and judged; nothing whose reply reached empersona was
    # asked again. Only calls in flight at the moment of the kill (at most --max-connections per
    # model) can have been answered by the server yet never received, and those are asked again.
    in_flight_bound = 2
    assert total <= subject_ok <= total + in_flight_bound, output
    assert total <= judge_ok <= total + in_flight_bound, output
    logs = sorted((tmp_path / "logs").glob("*.eval"))
    finished = [read_eval_log(str(p)) for p in logs]
    complete = [log for log in finished if log.status == "success"]
    assert len(complete) == 1 and len(complete[0].samples) == total
    assert all(s.scores["harm"].metadata["status"] == "scored" for s in complete[0].samples)
