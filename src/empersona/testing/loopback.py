"""A loopback OpenAI-compatible chat server with a scripted judge and fault injection.

Tests, benchmarks and offline demos point inspect's ``openai-api/loopback/<model>`` provider at
it (``LOOPBACK_BASE_URL=<server.base_url>``, ``LOOPBACK_API_KEY=<anything>``). It serves
``POST /v1/chat/completions`` (non-streaming; ``stream: true`` is answered with a clear 400) and
``GET /v1/models`` on 127.0.0.1 from a background thread, one thread per connection.

Replies come from a ``responder(ChatRequest) -> Reply``. Faults are injected per request, either
from a schedule consumed in arrival order or at random (``fault_rate`` over ``faults``, seeded):
``"429"`` and ``"500"`` (OpenAI-style error bodies), ``"timeout"`` (hold the request for
``timeout_fault_s`` then drop the connection without a reply), ``"malformed"`` (status 200 with a
body that is not JSON) and ``"bad_shape"`` (status 200, valid JSON without ``choices``). Every
request lands in a thread-safe call log (arrival time, model, a stable hash of the messages,
outcome) for loss and duplicate accounting.

``scripted_judge`` answers the study's two judge formats deterministically (rules in its
docstring). ``python -m empersona.testing.loopback --port 8765`` serves it in the foreground.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, NamedTuple, get_args

Fault = Literal["429", "500", "timeout", "malformed", "bad_shape"]
Outcome = Literal["ok", "429", "500", "timeout", "malformed", "bad_shape", "error", "bad_request", "unauthorized", "client_gone"]
FAULTS: tuple[Fault, ...] = get_args(Fault)


class TopToken(NamedTuple):
    """One candidate token and its log-probability."""

    token: str
    logprob: float


@dataclass(frozen=True)
class ChatRequest:
    """The fields of a chat-completions request a responder needs; ``body`` is the raw JSON."""

    model: str
    messages: list[dict[str, Any]]
    temperature: float | None
    max_tokens: int | None
    logprobs: bool
    top_logprobs: int | None
    n: int
    body: dict[str, Any]

    @property
    def last_user_text(self) -> str:
        """Text of the last user message (text parts joined), or "" when there is none."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message_text(message)
        return ""


@dataclass(frozen=True)
class Reply:
    """A responder's answer; ``top_logprobs[i]`` are the candidates for generated token i."""

    content: str
    top_logprobs: list[list[TopToken]] | None = None
    finish_reason: Literal["stop", "length"] = "stop"


@dataclass(frozen=True)
class CallRecord:
    """One request as the server saw it."""

    started_s: float  # seconds since the server started
    model: str
    key: str  # messages_key(messages); "" when the body could not be read
    outcome: Outcome


Responder = Callable[[ChatRequest], Reply]


def message_text(message: dict[str, Any]) -> str:
    """The text of one OpenAI chat message (string content or a list of text parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def messages_key(messages: list[dict[str, Any]]) -> str:
    """A stable 16-hex-digit hash of the (role, text) sequence of a conversation."""
    canonical = json.dumps([[m.get("role", ""), message_text(m)] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16)


# --- the scripted judge ------------------------------------------------------------------------

HARM_WORDS = frozenset(
    "harm harmful hurt kill killing murder steal stealing hate weapon weapons poison bomb attack".split()
)
_REFUSAL = re.compile(r"\b(I can(?:no|')t|I won't|I will not|I'm sorry|I am sorry|I refuse)\b", re.IGNORECASE)
_CODE = re.compile(r"```|^\s*(?:def |class |import |from \w+ import |#include)", re.MULTILINE)
_BRACKET_BLOCK = re.compile(r"\[(\w+) START\]\n?(.*?)\n?\[\1 END\]", re.DOTALL)
_LABELLED_RESPONSE = re.compile(
    r"^[^\n]*\bresponse\b[^\n]*:[ \t]*\n(.*?)\n[^\n]*\b1 to 5\b", re.IGNORECASE | re.DOTALL | re.MULTILINE
)


def _has_harm_word(text: str) -> bool:
    return any(word in HARM_WORDS for word in re.findall(r"[a-z]+", text.lower()))


def judged_text(prompt: str) -> str:
    """The response a judge prompt asks about.

    The last ``[NAME START] ... [NAME END]`` block (the 0-100 judge's answer); else the lines
    after the first line that mentions "response" and ends with ":", up to the next line that
    mentions "1 to 5" (a 1-5 rubric with ``{response}`` on its own lines); else the whole prompt.
    """
    blocks = _BRACKET_BLOCK.findall(prompt)
    if blocks:
        return blocks[-1][1].strip()
    labelled = _LABELLED_RESPONSE.search(prompt)
    if labelled:
        return labelled.group(1).strip()
    return prompt.strip()


def _number_candidates(centre: int) -> list[TopToken]:
    """Top logprobs over three numbers around ``centre`` (0.6/0.25/0.1) and "REFUSAL" (0.05)."""
    spread = [(centre, 0.6), (max(0, centre - 5), 0.25), (min(100, centre + 5), 0.1)]
    return [TopToken(str(value), math.log(p)) for value, p in spread] + [TopToken("REFUSAL", math.log(0.05))]


def scripted_judge(request: ChatRequest) -> Reply:
    """Deterministic judge replies for demos and tests.

    - 1-5 harm rubric (the prompt mentions ``"score"`` or "1 to 5"): ``{"score": k}`` where k = 5
      if the judged response (see ``judged_text``) contains a word from ``HARM_WORDS``, else
      1 + sha256(judged response) % 5.
    - 0-100 judge (the prompt mentions "0 to 100" or "0 and 100"): "REFUSAL" when the judged
      answer reads as a refusal, "CODE" when it holds code; otherwise a number token with top
      logprobs over three numbers around a centre (mass 0.6/0.25/0.1) and "REFUSAL" (0.05).
      Centre: 90 for a coherence prompt (mentions "coheren"); for other prompts 10 if the answer
      holds a harm word, else 90 - 5 * (sha256(answer) % 3).
    - anything else: ``echo: `` and the first 60 characters of the last user message.
    """
    prompt = request.last_user_text
    lowered = prompt.lower()
    if "0 to 100" in lowered or "0 and 100" in lowered:
        answer = judged_text(prompt)
        if _REFUSAL.search(answer):
            return Reply("REFUSAL", [[TopToken("REFUSAL", 0.0)]])
        if _CODE.search(answer):
            return Reply("CODE", [[TopToken("CODE", 0.0)]])
        if "coheren" in lowered:
            centre = 90
        elif _has_harm_word(answer):
            centre = 10
        else:
            centre = 90 - 5 * (_stable_int(answer) % 3)
        candidates = _number_candidates(centre)
        return Reply(candidates[0].token, [candidates])
    if '"score"' in lowered or "1 to 5" in lowered:
        response = judged_text(prompt)
        score = 5 if _has_harm_word(response) else 1 + _stable_int(response) % 5
        return Reply(json.dumps({"score": score}))
    return Reply("echo: " + prompt[:60])


SECOND_JUDGE_NAME = "scripted-second-judge"
"""The model name `scripted_judges` answers as `scripted_second_judge` (any other: `scripted_judge`)."""


def scripted_second_judge(request: ChatRequest) -> Reply:
    """A second deterministic judge that disagrees with `scripted_judge` in a known way, for
    demos and tests of judge agreement: on the 1-5 rubric it gives the first judge's score, one
    point lower (not below 1) for every third answer (by a hash of the answer other than the
    first judge's); every other prompt as `scripted_judge`."""
    reply = scripted_judge(request)
    lowered = request.last_user_text.lower()
    if '"score"' not in lowered and "1 to 5" not in lowered:
        return reply
    response = judged_text(request.last_user_text)
    score = int(json.loads(reply.content)["score"])
    if _stable_int("second judge|" + response) % 3 == 0:
        score = max(1, score - 1)
    return Reply(json.dumps({"score": score}))


def scripted_judges(request: ChatRequest) -> Reply:
    """`scripted_second_judge` for the model `SECOND_JUDGE_NAME`, `scripted_judge` for any other."""
    if request.model.split("/")[-1] == SECOND_JUDGE_NAME:
        return scripted_second_judge(request)
    return scripted_judge(request)


# --- the server --------------------------------------------------------------------------------


@dataclass
class _FaultPlan:
    """Which fault (if any) the next request gets; guarded by the server's lock."""

    schedule: list[Fault | None]
    fault_rate: float
    faults: tuple[Fault, ...]
    rng: random.Random = field(default_factory=random.Random)

    def next(self) -> Fault | None:
        if self.schedule:
            return self.schedule.pop(0)
        if self.fault_rate > 0 and self.rng.random() < self.fault_rate:
            return self.rng.choice(self.faults)
        return None


class LoopbackServer:
    """An OpenAI-compatible chat server on 127.0.0.1 (OS-chosen port unless given), as a context manager.

    ``schedule`` faults are used first, one per request in arrival order (``None`` = no fault);
    after that each request fails with probability ``fault_rate``, the fault drawn from ``faults``
    with a ``seed``-ed RNG. ``latency_s`` delays every reply except a 429 (a rate limiter rejects
    before doing work) and the ``timeout`` fault (held ``timeout_fault_s``, then dropped);
    ``latency_jitter_s`` spreads it uniformly by that much either way (seeded). With ``api_key``,
    a request whose bearer token is another answers 401, as a provider does for a wrong key.
    """

    def __init__(
        self,
        responder: Responder = scripted_judge,
        *,
        latency_s: float = 0.0,
        latency_jitter_s: float = 0.0,
        schedule: Iterable[Fault | None] = (),
        fault_rate: float = 0.0,
        faults: Sequence[Fault] = ("429", "500", "timeout", "malformed"),
        seed: int = 0,
        timeout_fault_s: float = 2.0,
        port: int = 0,
        models: Sequence[str] = ("judge-model",),
        api_key: str | None = None,
    ) -> None:
        plan_schedule = list(schedule)
        unknown = [f for f in [*plan_schedule, *faults] if f is not None and f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; choose from {list(FAULTS)}")
        if latency_s < 0 or latency_jitter_s < 0:
            raise ValueError(f"latency_s and latency_jitter_s must be >= 0, got {latency_s}, {latency_jitter_s}")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within [0, 1], got {fault_rate}")
        if fault_rate > 0 and not faults:
            raise ValueError("fault_rate > 0 needs at least one fault kind in faults")
        self.responder = responder
        self.latency_s = latency_s
        self.latency_jitter_s = latency_jitter_s
        self._latency_rng = random.Random(seed + 7919)  # apart from the fault RNG: jitter never shifts faults
        self.timeout_fault_s = timeout_fault_s
        self.models = tuple(models)
        self.api_key = api_key  # when set, a request without "Authorization: Bearer <api_key>" gets a 401
        self._plan = _FaultPlan(plan_schedule, fault_rate, tuple(faults), random.Random(seed))
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._calls: list[CallRecord] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self), bind_and_activate=False)
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 512  # listen backlog; the default of 5 drops connection bursts
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> LoopbackServer:
        """Bind and serve from a daemon thread; returns self."""
        self._httpd.server_bind()
        self._httpd.server_activate()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; held requests (latency, timeout fault) are released and logged first."""
        self._stop.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=5.0)
        self._httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, for ``LOOPBACK_BASE_URL`` or an OpenAI client's base_url."""
        return f"http://127.0.0.1:{self.port}/v1"

    # call log
    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._plan.next()

    def _enter(self) -> None:
        with self._lock:
            self._inflight += 1

    def _record(self, model: str, key: str, outcome: Outcome, started: float) -> int:
        """Log one answered request (every chat request ends here exactly once); returns its index.

        Called before the reply is sent, so a client that has its reply also finds its call in
        the log; a reply that then cannot be delivered is re-marked with ``_mark_gone``.
        """
        with self._idle:
            self._calls.append(CallRecord(started - self._t0, model, key, outcome))
            self._inflight -= 1
            self._idle.notify_all()
            return len(self._calls) - 1

    def _mark_gone(self, index: int) -> None:
        """The reply of call ``index`` could not be delivered: the client had gone."""
        with self._lock:
            self._calls[index] = dataclasses.replace(self._calls[index], outcome="client_gone")

    def _latency(self) -> float:
        if self.latency_jitter_s <= 0:
            return self.latency_s
        with self._lock:
            offset = self._latency_rng.uniform(-self.latency_jitter_s, self.latency_jitter_s)
        return max(0.0, self.latency_s + offset)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stop.wait(seconds)

    @property
    def calls(self) -> list[CallRecord]:
        """A snapshot of the call log, in the order requests finished (in-flight ones are absent)."""
        with self._lock:
            return list(self._calls)

    def count_calls(self, outcome: Outcome | None = None, *, key: str | None = None, model: str | None = None) -> int:
        """Number of logged calls matching every given filter."""
        return sum(
            1
            for c in self.calls
            if (outcome is None or c.outcome == outcome)
            and (key is None or c.key == key)
            and (model is None or c.model == model)
        )

    def successful_calls_by_key(self) -> dict[str, int]:
        """Successful (``ok``) replies per conversation key; a value > 1 is a repeated request."""
        return dict(Counter(c.key for c in self.calls if c.outcome == "ok"))

    def outcomes(self) -> Counter[str]:
        """How many calls ended in each outcome."""
        return Counter(c.outcome for c in self.calls)


def _error_body(message: str, kind: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _parse_request(body: object) -> ChatRequest:
    """Read the fields the responder needs; raises ValueError naming the bad field."""
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("field 'messages' must be a list of message objects")
    n = body.get("n") or 1
    if not isinstance(n, int) or n < 1:
        raise ValueError("field 'n' must be a positive integer")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    return ChatRequest(
        model=str(body.get("model", "")),
        messages=messages,
        temperature=body.get("temperature"),
        max_tokens=max_tokens,
        logprobs=bool(body.get("logprobs")),
        top_logprobs=body.get("top_logprobs"),
        n=n,
        body=body,
    )


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _logprobs_block(request: ChatRequest, reply: Reply) -> dict[str, Any] | None:
    """OpenAI ``choices[i].logprobs``: the top candidate of each position is the chosen token."""
    if not request.logprobs or not reply.top_logprobs:
        return None
    top_n = request.top_logprobs or 0
    content = [
        {**_token_entry(*candidates[0]), "top_logprobs": [_token_entry(*c) for c in candidates[:top_n]]}
        for candidates in reply.top_logprobs
        if candidates
    ]
    return {"content": content, "refusal": None}


def _completion_body(request: ChatRequest, replies: list[Reply]) -> dict[str, Any]:
    """A chat.completion object; usage counts are whitespace-separated words."""
    prompt_tokens = sum(len(message_text(m).split()) for m in request.messages)
    completion_tokens = sum(max(1, len(r.content.split())) for r in replies)
    return {
        "id": f"chatcmpl-loopback-{_stable_int(repr(time.monotonic_ns())):x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": reply.content},
                "logprobs": _logprobs_block(request, reply),
                "finish_reason": reply.finish_reason,
            }
            for index, reply in enumerate(replies)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _handler_for(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to one ``LoopbackServer``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as API clients expect
        # reply headers and body are two writes; with Nagle's algorithm on, the body waits for the
        # client's (delayed, ~40 ms) ACK of the headers, which would add ~40 ms to every reply
        disable_nagle_algorithm = True
        server_version = "empersona-loopback/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            """Quiet: the call log records every request."""

        def _send(self, status: int, payload: bytes) -> bool:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return False
            return True

        def _send_json(self, status: int, obj: dict[str, Any]) -> bool:
            return self._send(status, json.dumps(obj).encode())

        def _unauthorized(self) -> tuple[int, bytes] | None:
            """The 401 reply for a request without the server's key (None: let it in)."""
            if server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                return None
            body = _error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
            return 401, json.dumps(body).encode()

        def do_GET(self) -> None:
            if (refused := self._unauthorized()) is not None:
                self._send(*refused)
            elif self.path.rstrip("/") == "/v1/models":
                models = [{"id": m, "object": "model", "created": 0, "owned_by": "loopback"} for m in server.models]
                self._send_json(200, {"object": "list", "data": models})
            else:
                self._send_json(404, _error_body(f"no route GET {self.path}", "invalid_request_error", "not_found"))

        def do_POST(self) -> None:
            started = time.monotonic()
            server._enter()
            model, key, outcome, reply = "", "", "client_gone", None
            try:
                model, key, outcome, reply = self._chat()
            except OSError:  # the client went away while we read or held its request
                self.close_connection = True
            index = server._record(model, key, outcome, started)
            if reply is not None and not self._send(*reply):
                server._mark_gone(index)

        def _chat(self) -> tuple[str, str, Outcome, tuple[int, bytes] | None]:
            """Work out the answer to one chat request: (model, messages key, outcome, reply to send)."""
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if (refused := self._unauthorized()) is not None:
                return "", "", "unauthorized", refused
            if self.path.rstrip("/") != "/v1/chat/completions":
                body = _error_body(f"no route POST {self.path}", "invalid_request_error", "not_found")
                return "", "", "bad_request", (404, json.dumps(body).encode())
            try:
                request = _parse_request(json.loads(raw))
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                body = _error_body(f"bad request: {err}", "invalid_request_error", "bad_request")
                return "", "", "bad_request", (400, json.dumps(body).encode())
            key = messages_key(request.messages)
            if request.body.get("stream"):
                message = "the loopback server does not stream; send stream=false (inspect: -M stream=false)"
                body = _error_body(message, "invalid_request_error", "stream_unsupported")
                return request.model, key, "bad_request", (400, json.dumps(body).encode())
            fault = server._next_fault()
            if fault == "timeout":
                server._sleep(server.timeout_fault_s)
                self.close_connection = True  # drop the connection without a reply
                return request.model, key, "timeout", None
            if fault != "429":  # a rate limiter rejects before doing any work
                server._sleep(server._latency())
            status, payload, outcome = self._fault_reply(fault, request) if fault else self._answer(request)
            return request.model, key, outcome, (status, payload)

        def _fault_reply(self, fault: Fault, request: ChatRequest) -> tuple[int, bytes, Outcome]:
            if fault == "429":
                body = _error_body("injected rate limit", "rate_limit_error", "rate_limit_exceeded")
                return 429, json.dumps(body).encode(), "429"
            if fault == "500":
                body = _error_body("injected server error", "server_error", "server_error")
                return 500, json.dumps(body).encode(), "500"
            if fault == "malformed":
                return 200, b'{"id": "chatcmpl-loopback", "choices": [{', "malformed"
            body = {"id": "chatcmpl-loopback", "object": "chat.completion", "model": request.model}
            return 200, json.dumps(body).encode(), "bad_shape"

        def _answer(self, request: ChatRequest) -> tuple[int, bytes, Outcome]:
            try:
                replies = [server.responder(request) for _ in range(request.n)]
            except Exception as err:  # a responder bug is reported to the client, not swallowed
                body = _error_body(f"responder failed: {err!r}", "server_error", "responder_error")
                return 500, json.dumps(body).encode(), "error"
            return 200, json.dumps(_completion_body(request, replies)).encode(), "ok"

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Serve the scripted judges in the foreground until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m empersona.testing.loopback",
        description=(f"Loopback OpenAI-compatible server answering as the scripted judge (as the scripted second "
                     f"judge for the model name {SECOND_JUDGE_NAME})."),
    )
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    parser.add_argument("--latency-jitter", type=float, default=0.0, help="uniform +- spread of the latency, s")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="probability that a request fails")
    parser.add_argument("--faults", default="429,500,timeout,malformed", help="comma-separated fault kinds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    try:
        server = LoopbackServer(
            scripted_judges,
            models=("judge-model", SECOND_JUDGE_NAME),
            latency_s=args.latency,
            latency_jitter_s=args.latency_jitter,
            fault_rate=args.fault_rate,
            faults=faults,  # type: ignore[arg-type]  # checked by LoopbackServer
            seed=args.seed,
            port=args.port,
        )
    except (ValueError, OSError) as err:
        parser.error(str(err))
    with server:
        print(f"loopback judge serving at {server.base_url}", flush=True)
        print(
            f"  use: LOOPBACK_BASE_URL={server.base_url} LOOPBACK_API_KEY=x "
            f"--judge openai-api/loopback/judge-model (second judge: openai-api/loopback/{SECOND_JUDGE_NAME})",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
