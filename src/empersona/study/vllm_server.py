"""One vLLM OpenAI-compatible server for the base model and all its adapters.

Instead of loading the base weights once per adapter, the study starts vLLM's OpenAI server
once with ``--enable-lora`` and one ``--lora-modules`` entry per adapter; the battery then
reaches each model as ``openai-api/empersonavllm/<name>``, the base as ``base-<identity>``
(``plan.base_identity``: another base model is another name, so no cached answer crosses).

The server's life is tied to the study's:

- it is not started when something already answers on its port (vLLM binds with SO_REUSEPORT,
  so a second server on a taken port would not fail: the kernel would split the connections),
  unless that is the run folder's own server, left running by an earlier run that was killed
  (``vllm-server.pid`` names it, and its command line is vLLM's server on that port): that one is
  stopped first;
- it takes a random API key, given only through its environment (``VLLM_API_KEY``) and to the
  battery's client, and is health-checked with it (``/v1/models`` lists every name) before any
  evaluation starts;
- a watchdog thread stops the study with the server's exit code and the end of its log when
  the server dies while the battery runs;
- SIGTERM and SIGHUP stop the study like Ctrl-C does, and on every way out its whole process
  group is stopped (TERM, then KILL after a grace period).

Its output goes to ``<out>/vllm-server.log``. Sampling defaults: vLLM applies the model's
``generation_config.json`` (e.g. top_k 20, repetition_penalty 1.05 for Qwen2.5-Instruct) to every
field a request leaves unset unless started with ``--generation-config vllm``, which the study
passes by default (``vllm.generation_config``), so what is sampled is what the battery asks for.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from empersona.atomic import replace_text
from empersona.errors import EmpersonaError
from empersona.study.config import StudyConfig
from empersona.study.plan import VLLM_SERVICE, ModelSpec

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
STOP_GRACE_S = 30.0
"""How long the server's process group has to exit after SIGTERM before it is killed."""
WATCH_INTERVAL_S = 1.0
LOG_TAIL_LINES = 40
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
ERROR_MARKERS = ("Error", "error", "CUDA out of memory")
SERVICE_ENV = (f"{VLLM_SERVICE.upper()}_BASE_URL", f"{VLLM_SERVICE.upper()}_API_KEY")
"""The environment inspect's ``openai-api/empersonavllm/...`` models read their address and key from."""


def max_lora_rank(adapters: Sequence[Path]) -> int:
    """The smallest rank vLLM accepts that fits every adapter's ``r``."""
    ranks = [json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))["r"] for path in adapters]
    needed = max(ranks, default=8)
    return next((rank for rank in LORA_RANKS if rank >= needed), needed)


def served_name(model: ModelSpec) -> str:
    """The name ``model`` has on the server: the last part of its model string."""
    return model.model_string.rsplit("/", 1)[-1]


MAX_CPU_LORAS = 16
"""At most this many adapters are kept in the server's CPU memory (about 0.5 GB each for a rank-32
adapter of a 32B model on all projections): seven models of the paper's study fit, a study's
checkpoints beyond that are read from disk when the battery reaches them."""


def max_loras(study: StudyConfig, adapters: int) -> int:
    """LoRA slots on the GPU (``--max-loras``): ``vllm.max_loras`` when set, else min(adapters, 2).

    The battery evaluates one model at a time (a fine-tune's contrast foils come from the base,
    which needs no slot), so one slot holds the adapter in use and a second lets the next one
    load while the last requests of the previous drain. Every slot reserves memory for a
    rank-``max_lora_rank`` adapter on each layer, taken from the KV cache; every adapter is kept in
    CPU memory (``--max-cpu-loras``, the number of adapters up to ``MAX_CPU_LORAS``: a study with
    many checkpoints reads the rest from disk when asked; vLLM's default, ``max_loras``, would
    read the others from disk again at each switch) and swapped in when asked for.
    """
    return study.vllm.max_loras if study.vllm.max_loras is not None else min(adapters, 2)


def server_command(study: StudyConfig, models: Sequence[ModelSpec]) -> list[str]:
    """The command line of vLLM's OpenAI server for the study's base model and adapters."""
    settings = study.vllm
    base = next(m for m in models if m.kind == "base")
    adapters = [m for m in models if m.served and m.adapter is not None]
    cmd = [
        settings.python or sys.executable, "-m", SERVER_MODULE,
        "--model", base.base_model, "--served-model-name", served_name(base),
        "--host", "127.0.0.1", "--port", str(settings.port),
        "--tensor-parallel-size", str(settings.tensor_parallel_size),
        "--pipeline-parallel-size", str(settings.pipeline_parallel_size),
        "--generation-config", settings.generation_config,
    ]  # fmt: skip
    if adapters:
        cmd += ["--enable-lora", "--max-lora-rank", str(max_lora_rank([m.source or m.adapter for m in adapters if m.adapter]))]
        slots = max_loras(study, len(adapters))
        if not any(arg == "--max-loras" or arg.startswith("--max-loras=") for arg in settings.extra_args):
            cmd += ["--max-loras", str(slots)]
        if not any(arg == "--max-cpu-loras" or arg.startswith("--max-cpu-loras=") for arg in settings.extra_args):
            cmd += ["--max-cpu-loras", str(max(min(len(adapters), MAX_CPU_LORAS), slots))]
        # vLLM's JSON form: a path with ',' or '=' in it would break the name=path form
        entries = ({"name": served_name(m), "path": str(m.adapter), "base_model_name": served_name(base)} for m in adapters)
        cmd += ["--lora-modules", *(json.dumps(entry) for entry in entries)]
    for flag, value in (
        ("--max-model-len", settings.max_model_len),
        ("--gpu-memory-utilization", settings.gpu_memory_utilization),
        ("--dtype", settings.dtype),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(settings.extra_args)


def vllm_missing(study: StudyConfig) -> str | None:
    """Why the server could not start for want of vLLM (None when its Python finds the package):
    asked before anything trains, so a missing install is not found after hours of training."""
    python = study.vllm.python or sys.executable
    probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"
    try:
        done = subprocess.run([python, "-c", probe], env={**os.environ, **study.vllm.env}, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"vllm.python {python} could not be run ({err})"
    if done.returncode != 0:
        return (f"{python} has no vllm package: install it there (pip install -e '.[vllm]' on the GPU machine), "
                "or point the study's vllm.python at the Python of an environment that has it")
    return None


def command_text(command: Sequence[str]) -> str:
    """A command line as a shell would take it back."""
    import shlex

    return " ".join(shlex.quote(part) for part in command)


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The end of the server's log, with the lines that name an error first (vLLM's last lines
    are often the shutdown of its workers, after the line that says what went wrong)."""
    if not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()
    errors = [line for line in text if any(marker in line for marker in ERROR_MARKERS)][-lines // 2:]
    tail = text[-lines:]
    shown = [line for line in errors if line not in tail]
    return "\n".join([*shown, *(["..."] if shown else []), *tail])


def port_answers(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


PROGRESS_EVERY_S = 30.0
"""How often the wait for the server says how long it has been."""


def wait_until_serving(base_url: str, names: Sequence[str], process: subprocess.Popen[bytes], timeout_s: float,
                       log: Path, api_key: str, progress: Callable[[str], None] | None = None,
                       every_s: float = PROGRESS_EVERY_S) -> None:
    """Poll ``/v1/models`` with the server's key until every model name is listed; fail early
    if the server dies or refuses the key. ``progress`` hears, every ``every_s`` seconds, how
    long the wait has been and the server log's last line (loading a large model takes minutes)."""
    import httpx

    start = time.monotonic()
    deadline = start + timeout_s
    said = start
    headers = {"Authorization": f"Bearer {api_key}"}
    while time.monotonic() < deadline:
        if progress is not None and time.monotonic() - said >= every_s:
            said = time.monotonic()
            last = next((line for line in reversed(log.read_text(errors="replace").splitlines()) if line.strip()), "") \
                if log.exists() else ""
            progress(f"waiting for the vLLM server: {said - start:.0f} s of at most {timeout_s:.0f} s"
                     + (f"; its log: {last[:160]}" if last else ""))
        if process.poll() is not None:
            raise EmpersonaError(f"the vLLM server exited with code {process.returncode} before serving; its log ({log}) ends:\n"
                                 f"{log_tail(log)}")
        try:
            reply = httpx.get(f"{base_url}/models", timeout=5, headers=headers)
            if reply.status_code == 401:
                raise EmpersonaError(f"{base_url} refused the study's API key (401): the server answering there is not the "
                                     f"one this study started (or VLLM_API_KEY did not reach it); see {log}")
            listed = {m["id"] for m in reply.json().get("data", [])}
            if set(names) <= listed:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1.0)
    raise EmpersonaError(f"the vLLM server did not serve {list(names)} within {timeout_s:.0f} s; see {log}")


def stop(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """Stop the server's whole process group: TERM, then KILL after ``grace_s``.

    The group is signalled even when its leader has exited already: vLLM's engine and worker
    processes can outlive it (and hold the GPUs and the port).
    """
    # started with start_new_session: its pid is its process group's id; polling reaps the
    # leader, or it would stay a member (a zombie) of its group
    stop_group(process.pid, grace_s, process.poll)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass


def stop_group(group: int, grace_s: float = STOP_GRACE_S, poll: Callable[[], object] = lambda: None) -> None:
    """Signal a process group TERM, then KILL after ``grace_s``; return once it is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:  # nothing left in the group
            break
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and group_alive(group):
            poll()
            time.sleep(0.1)
        if not group_alive(group):
            break


PID_FILE = "vllm-server.pid"
"""In the run folder while the study's server runs: its process group and port (`leftover_server`)."""


def leftover_server(out: Path, port: int) -> int | None:
    """The process group of the run folder's own vLLM server on ``port``, left running by an earlier
    run that was killed before it could stop it; None if the pid file is missing or names anything
    else (a pid since reused, another program, another port)."""
    try:
        record = json.loads((out / PID_FILE).read_text(encoding="utf-8"))
        pid = int(record["pid"])
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        ours = (record.get("port") == port and SERVER_MODULE in args and "--port" in args
                and args[args.index("--port") + 1:][:1] == [str(port)] and os.getpgid(pid) == pid)
    except (OSError, ValueError, KeyError, TypeError):  # no file, no such process, no /proc
        return None
    return pid if ours else None


def group_alive(group: int) -> bool:
    """Whether a process group still has a member that is not a zombie."""
    proc = Path("/proc")
    if not proc.is_dir():  # no /proc: ask the kernel whether the group exists
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while the server ran: stop like Ctrl-C (the server with it).
    ``signum`` gives the command its exit code, 128 + signum (143 for SIGTERM), as a shell has it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


STOPPED_BY: list[int] = []
"""The stop signals that arrived in this process (the command's exit code names the last; typer
turns the interrupt into its own exit code 130 on the way out)."""


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise ``StopSignal`` in the main thread (as SIGINT raises
    KeyboardInterrupt), so the ``finally`` clauses that stop the server run; the handlers there
    before are put back after."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        STOPPED_BY.append(signum)
        raise StopSignal(f"stopped by {signal.Signals(signum).name}", signum)

    saved = _handled((signal.SIGTERM, signal.SIGHUP), interrupt)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _handled(signals: tuple[signal.Signals, ...], handler: Callable[[int, FrameType | None], None]) -> dict[signal.Signals, Any]:
    """Install ``handler`` for each of ``signals`` but those ignored (``nohup`` ignores SIGHUP, a
    script's background job SIGINT: a closed terminal must not stop the run); the handlers
    replaced, to put back."""
    saved = {}
    for sig in signals:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            saved[sig] = signal.signal(sig, handler)
    return saved


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """While inside, SIGINT, SIGTERM and SIGHUP are noted, not raised: a second Ctrl-C or kill while
    the server's process group is being stopped must not cut the stop short (it would leave the
    server holding the GPUs and the port). After the block, the last one noted is raised (a
    KeyboardInterrupt for SIGINT, else ``StopSignal``), unless the block raised already."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        arrived.append(signum)

    saved = _handled((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), note)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if arrived:
        if arrived[-1] == signal.SIGINT:
            raise KeyboardInterrupt
        STOPPED_BY.append(arrived[-1])
        raise StopSignal(f"stopped by {signal.Signals(arrived[-1]).name}", arrived[-1])


class Watchdog:
    """A thread that notices the server's exit while the study uses it and interrupts the main
    thread (as Ctrl-C would), so a dead server stops the study instead of leaving it retrying."""

    def __init__(self, process: subprocess.Popen[bytes], interval_s: float = WATCH_INTERVAL_S) -> None:
        self.process = process
        self.interval_s = interval_s
        self.exit_code: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="vllm-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before the server is stopped on purpose)."""
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        import _thread

        while not self._done.wait(self.interval_s):
            code = self.process.poll()
            if code is not None:
                self.exit_code = code
                _thread.interrupt_main()
                return


@contextmanager
def service_environment(base_url: str, api_key: str) -> Iterator[None]:
    """Point inspect's ``openai-api/empersonavllm/...`` models at the server; restore after."""
    saved = {key: os.environ.get(key) for key in SERVICE_ENV}
    os.environ.update(dict(zip(SERVICE_ENV, (base_url, api_key), strict=True)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def serve_adapters(study: StudyConfig, models: Sequence[ModelSpec]) -> Iterator[str]:
    """Start the server, wait until every model is listed, yield its base URL, stop it at the end."""
    from empersona.study.run import say

    port = study.vllm.port
    if port_answers(port):
        if (leftover := leftover_server(study.out, port)) is None:
            raise EmpersonaError(f"something already answers on 127.0.0.1:{port} (a vLLM server left from an earlier run, "
                                 "or another program): stop it, or give this study another port with the vllm.port setting")
        say(f"stopping the vLLM server an earlier run of this study left on port {port} (process group {leftover})")
        stop_group(leftover)
    log = study.out / "vllm-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    api_key = secrets.token_urlsafe(24)  # this run's only: never written anywhere
    env = {**os.environ, **study.vllm.env, "VLLM_API_KEY": api_key}
    say(f"starting the vLLM server (its log: {log})")
    with stop_signals_interrupt():
        with log.open("ab") as sink:
            process = subprocess.Popen(server_command(study, models), stdout=sink, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        watchdog: Watchdog | None = None
        try:
            replace_text(study.out / PID_FILE, json.dumps({"pid": process.pid, "port": port}))  # inside: stopped on a failure
            wait_until_serving(base_url, [served_name(m) for m in models if m.served], process, study.vllm.startup_timeout_s, log,
                               api_key, progress=say)
            if process.poll() is not None:  # listed by a server that is not ours, and ours is gone
                raise EmpersonaError(f"the vLLM server exited with code {process.returncode} right after it came up; its log "
                                     f"({log}) ends:\n{log_tail(log)}")
            watchdog = Watchdog(process).start()
            with service_environment(base_url, api_key):
                yield base_url
        except BaseException as err:
            # the server's death explains whatever the battery then failed with
            code = (watchdog.exit_code if watchdog.exit_code is not None else process.poll()) if watchdog is not None else None
            if code is not None:
                raise server_died(code, log) from err
            raise
        finally:
            with stop_signals_deferred():  # nor a second Ctrl-C or kill: the group is stopped to the end
                try:
                    if watchdog is not None:
                        watchdog.stop()
                finally:  # an interrupt from the watchdog landing here must not keep the server alive
                    stop(process)
                    (study.out / PID_FILE).unlink(missing_ok=True)


def server_died(code: int, log: Path) -> EmpersonaError:
    """The error of a server that exited while the battery ran."""
    return EmpersonaError(f"the vLLM server exited with code {code} during the evaluations; its log ({log}) ends:\n"
                          f"{log_tail(log)}\nRun the same command again to continue (finished work is kept)")
