"""A stand-in for ``python -m vllm.entrypoints.openai.api_server`` (vLLM is not installed here).

The tests copy this file to ``<tmp>/vllm/entrypoints/openai/api_server.py`` and put ``<tmp>`` on
the server's PYTHONPATH through the study's ``vllm.env``, so ``serve_adapters`` starts it exactly
as it starts vLLM. Like vLLM it reads ``--lora-modules`` entries as ``name=path`` only when they
hold '=' and no ',' (JSON otherwise), takes its key from ``VLLM_API_KEY``, binds its port with
SO_REUSEADDR and SO_REUSEPORT, and starts an "engine" child process in its process group. It
serves chat completions through empersona's loopback server, answering ``FAKE_VLLM_REPLY``
(``{model}`` replaced by the requested name) after ``FAKE_VLLM_LATENCY_S``.

Knobs (environment): FAKE_VLLM_RECORD (file: argv, adapter paths and whether a key came, as
JSON), FAKE_VLLM_DIE_AFTER_S (exit with code 3 that long after serving), FAKE_VLLM_LEADER_EXITS
(exit at once after serving, leaving the engine child serving on), FAKE_VLLM_PIDS (file: the
engine child's pid).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time


def lora_entry(parser: argparse.ArgumentParser, item: str) -> dict:  # type: ignore[type-arg]
    """One --lora-modules entry the way vLLM reads it."""
    if "=" in item and "," not in item:
        name, path = item.split("=")
        return {"name": name, "path": path}
    try:
        return json.loads(item)  # type: ignore[no-any-return]
    except json.JSONDecodeError:
        parser.error(f"Invalid JSON format for --lora-modules: {item}")
        raise


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--model", "--host", "--dtype", "--generation-config", "--max-model-len", "--gpu-memory-utilization", "--api-key"):
        parser.add_argument(flag)
    for flag in ("--port", "--tensor-parallel-size", "--pipeline-parallel-size", "--max-loras", "--max-cpu-loras", "--max-lora-rank"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--lora-modules", nargs="+", default=[])
    args = parser.parse_args()
    loras = [lora_entry(parser, item) for item in args.lora_modules]
    for lora in loras:  # vLLM reads each adapter's config when it starts
        with open(os.path.join(lora["path"], "adapter_config.json")) as handle:
            json.load(handle)
    key = args.api_key or os.environ.get("VLLM_API_KEY")
    if os.environ.get("FAKE_VLLM_RECORD"):
        with open(os.environ["FAKE_VLLM_RECORD"], "w") as handle:
            json.dump({"argv": sys.argv[1:], "loras": loras, "got_key": bool(key)}, handle)

    from empersona.testing.loopback import LoopbackServer, Reply

    reply = os.environ.get("FAKE_VLLM_REPLY", "a reply from {model}")
    names = (args.served_model_name or [args.model]) + [lora["name"] for lora in loras]
    server = LoopbackServer(lambda request: Reply(reply.format(model=request.model)), port=args.port, models=tuple(names),
                            api_key=key, latency_s=float(os.environ.get("FAKE_VLLM_LATENCY_S", "0")))
    for option in (socket.SO_REUSEADDR, socket.SO_REUSEPORT):  # as vLLM's create_server_socket does
        server._httpd.socket.setsockopt(socket.SOL_SOCKET, option, 1)
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if os.environ.get("FAKE_VLLM_PIDS"):
        with open(os.environ["FAKE_VLLM_PIDS"], "w") as handle:
            handle.write(str(engine.pid))
    server.start()
    print(f"serving {names} on {args.port}", flush=True)
    if os.environ.get("FAKE_VLLM_LEADER_EXITS"):
        os._exit(0)
    if os.environ.get("FAKE_VLLM_DIE_AFTER_S"):
        time.sleep(float(os.environ["FAKE_VLLM_DIE_AFTER_S"]))
        print("RuntimeError: CUDA error: an illegal memory access was encountered", flush=True)
        for line in range(60):
            print(f"worker shutdown line {line}", flush=True)
        engine.kill()
        os._exit(3)
    threading.Event().wait()


if __name__ == "__main__":
    main()
