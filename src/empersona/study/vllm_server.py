"""One vLLM OpenAI-compatible server for the base model and all its adapters.

Instead of loading the base weights once per adapter, the study starts ``vllm serve`` once with
``--enable-lora`` and one ``--lora-modules name=path`` entry per adapter; the battery then reaches
each model as ``openai-api/empersonavllm/<name>`` (the base is served as ``base``). The server is
health-checked (``/v1/models`` lists every name) before any evaluation starts, and stopped (its
whole process group) when the study ends or fails. Its output goes to ``<out>/vllm-server.log``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from empersona.errors import EmpersonaError
from empersona.study.config import StudyConfig
from empersona.study.plan import VLLM_SERVICE, ModelSpec

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def max_lora_rank(adapters: Sequence[Path]) -> int:
    """The smallest rank vLLM accepts that fits every adapter's ``r``."""
    ranks = [json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))["r"] for path in adapters]
    needed = max(ranks, default=8)
    return next((rank for rank in LORA_RANKS if rank >= needed), needed)


def server_command(study: StudyConfig, models: Sequence[ModelSpec]) -> list[str]:
    """The ``vllm serve`` command line for the study's base model and adapters."""
    settings = study.vllm
    base = next(m for m in models if m.adapter is None)
    adapters = [m for m in models if m.adapter is not None]
    cmd = [
        settings.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", base.base_model, "--served-model-name", base.name,
        "--host", "127.0.0.1", "--port", str(settings.port),
        "--tensor-parallel-size", str(settings.tensor_parallel_size),
        "--pipeline-parallel-size", str(settings.pipeline_parallel_size),
    ]  # fmt: skip
    if adapters:
        cmd += ["--enable-lora", "--max-loras", str(len(adapters))]
        cmd += ["--max-lora-rank", str(max_lora_rank([m.adapter for m in adapters if m.adapter]))]
        cmd += ["--lora-modules", *(f"{m.name}={m.adapter}" for m in adapters)]
    for flag, value in (
        ("--max-model-len", settings.max_model_len),
        ("--gpu-memory-utilization", settings.gpu_memory_utilization),
        ("--dtype", settings.dtype),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(settings.extra_args)


def wait_until_serving(base_url: str, names: Sequence[str], process: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    """Poll ``/v1/models`` until every model name is listed; fail early if the server dies."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmpersonaError(f"the vLLM server exited with code {process.returncode} before serving; its log ({log}) ends:\n{tail}")
        try:
            listed = {m["id"] for m in httpx.get(f"{base_url}/models", timeout=5).json().get("data", [])}
            if set(names) <= listed:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1.0)
    raise EmpersonaError(f"the vLLM server did not serve {list(names)} within {timeout_s:.0f} s; see {log}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group: TERM, then KILL after 30 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextmanager
def serve_adapters(study: StudyConfig, models: Sequence[ModelSpec]) -> Iterator[str]:
    """Start the server, wait until every model is listed, yield its base URL, stop it at the end."""
    log = study.out / "vllm-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    base_url = f"http://127.0.0.1:{study.vllm.port}/v1"
    env = {**os.environ, **study.vllm.env}
    with log.open("ab") as sink:
        process = subprocess.Popen(server_command(study, models), stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    service = VLLM_SERVICE.upper()
    saved = {key: os.environ.get(key) for key in (f"{service}_BASE_URL", f"{service}_API_KEY")}
    try:
        wait_until_serving(base_url, [m.name for m in models], process, study.vllm.startup_timeout_s, log)
        os.environ[f"{service}_BASE_URL"] = base_url
        os.environ[f"{service}_API_KEY"] = "local-vllm"
        yield base_url
    finally:
        stop(process)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
