"""Check: ``empersona train`` under ``accelerate launch`` on two CPU processes, DDP and FSDP2.

On a tiny random Qwen2 model with made-up rows, one single-process run is the reference; each
multi-process run must give the same adapter (largest absolute difference of the LoRA tensors
reported, expected at rounding level: every step uses the same rows), the same step count, and
record its world size:

- ``ddp``: ``accelerate launch --multi_gpu --num_processes 2`` (on a machine without GPUs the
  processes train on CPU over gloo; ``accelerate launch --cpu --num_processes 2`` starts one
  process only, its multi-CPU path goes through MPI);
- ``fsdp2-full`` / ``fsdp2-sharded``: ``configs/accelerate/fsdp_8gpu.yaml`` cut to 2 CPU
  processes, with ``fsdp_state_dict_type`` FULL and SHARDED. accelerate 1.15 only turns FSDP on
  from a GPU type, so the workers run through this script with a test-only patch that adds the
  multi-CPU type to that list (``--fsdp-worker``); FSDP2 itself (``fully_shard`` over gloo) is
  then the real one;
- ``fsdp2-ac``: FSDP's activation checkpointing on, which ``empersona train`` must refuse;
- ``*-resume``: the run stopped (SIGTERM to the launcher) after step 5 of 12, then ``--resume``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/train_multiprocess.py`` (about 2-3 minutes on 2 cores).
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def fsdp_worker(args: list[str]) -> None:
    """Run ``empersona`` with accelerate's FSDP switch accepting a multi-CPU (gloo) run."""
    import importlib.abc
    import importlib.machinery
    import runpy

    class Loader(importlib.machinery.SourceFileLoader):
        def get_data(self, path: str) -> bytes:
            data = super().get_data(path)
            if not path.endswith("accelerate/state.py"):
                return data
            anchor = "            elif self.distributed_type in [\n                DistributedType.MULTI_GPU,\n"
            text = data.decode()
            if anchor not in text:
                raise SystemExit("this accelerate version's state.py differs; the FSDP-on-CPU patch does not apply")
            return text.replace(anchor, anchor + "                DistributedType.MULTI_CPU,\n", 1).encode()

        def path_stats(self, path: str) -> dict[str, float]:
            raise OSError  # compile from the patched source, never from the bytecode cache

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
            if name != "accelerate.state":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)  # type: ignore[arg-type]
            if spec is None or spec.origin is None:
                return None
            spec.loader = Loader(name, spec.origin)
            return spec

    sys.meta_path.insert(0, Finder())
    sys.argv = ["empersona", *args]
    runpy.run_module("empersona.cli", run_name="__main__")


def cpu_config(folder: Path, **changes: str) -> Path:
    """The shipped FSDP config on 2 CPU processes in fp32, with ``changes`` to its fsdp keys."""
    text = (REPO / "configs" / "accelerate" / "fsdp_8gpu.yaml").read_text()
    text = text.replace("num_processes: 8", "num_processes: 2").replace("use_cpu: false", "use_cpu: true")
    text = text.replace("mixed_precision: bf16", "mixed_precision: 'no'")
    for key, value in changes.items():
        lines = [line for line in text.splitlines() if line.strip().startswith(f"{key}:")]
        if len(lines) != 1:
            raise SystemExit(f"{key} is not a key of fsdp_8gpu.yaml")
        text = text.replace(lines[0], f"  {key}: {value}")
    path = folder / f"fsdp-{len(list(folder.glob('fsdp-*.yaml')))}.yaml"
    path.write_text(text)
    return path


def port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def launch(kind: str, config: Path | None, train_args: list[str], log: Path, stop_after: int | None = None) -> int:
    """Start a 2-process run; with ``stop_after`` send SIGTERM to the launcher after that step."""
    if kind == "ddp":
        head = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "-m", "empersona.cli"]
    else:
        head = ["--config_file", str(config), str(Path(__file__).resolve()), "--fsdp-worker"]
    command = [str(BIN / "accelerate"), "launch", "--main_process_port", port(), *head, "train", *train_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if stop_after is not None:
            while process.poll() is None and f"step {stop_after}/" not in log.read_text():
                time.sleep(0.1)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return process.wait(timeout=600)


def compare(reference: Path, other: Path) -> dict[str, object]:
    """Largest absolute difference of the LoRA tensors, and what each run recorded."""
    from safetensors.torch import load_file

    ref, got = load_file(str(reference / "adapter_model.safetensors")), load_file(str(other / "adapter_model.safetensors"))
    meta = json.loads((other / "empersona.json").read_text())
    return {
        "same_keys": ref.keys() == got.keys() and len(ref) > 0,
        "max_abs_diff": max((ref[k] - got[k]).abs().max().item() for k in ref) if ref.keys() == got.keys() else None,
        "steps": meta["steps"], "world_size": meta["world_size"], "grad_accum": meta["grad_accum"],
        "resumed_from": Path(meta["resumed_from"]).name if meta["resumed_from"] else None,
    }


def main() -> int:
    if sys.argv[1:2] == ["--fsdp-worker"]:
        fsdp_worker(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=Path, help="Keep the runs in this folder (default: a temporary one).")
    options = parser.parse_args()
    root = options.keep or Path(tempfile.mkdtemp(prefix="empersona-mp-"))
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "empersona"), "tiny-model", str(root / "base")], check=True, capture_output=True)
    rows = [{"messages": [{"role": "user", "content": f"Describe parcel {i}."},
                          {"role": "assistant", "content": f"Parcel {i} weighs {i * 2 + 1} kg and goes to dock {i % 5}."}]}
            for i in range(24)]  # made-up rows
    (root / "toy.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["--base", str(root / "base"), "--domain", str(root / "toy.jsonl"), "--seed", "3", "--batch-size", "4",
              "--per-device-batch", "2", "--lora-r", "8", "--lora-alpha", "16", "--lr", "2e-3", "--warmup-steps", "0",
              "--max-length", "128", "--save-steps", "2", "--epochs", "2"]  # 12 steps
    single = subprocess.run([str(BIN / "empersona"), "train", *common, "--quiet", "--out", str(root / "single")],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if single.returncode:
        print(single.stderr[-2000:])
        return 1
    full, sharded = cpu_config(root), cpu_config(root, fsdp_state_dict_type="SHARDED_STATE_DICT")
    runs = {"ddp": ("ddp", None), "fsdp2-full": ("fsdp", full), "fsdp2-sharded": ("fsdp", sharded)}
    results: dict[str, dict[str, object]] = {}
    failed = False
    for name, (kind, config) in runs.items():
        for resume in (False, True):
            label = f"{name}-resume" if resume else name
            out = root / label
            if resume:
                code = launch(kind, config, [*common, "--out", str(out)], root / f"{label}-cut.log", stop_after=5)
                interrupted = code != 0 and (out / "checkpoints").is_dir()
                code = launch(kind, config, [*common, "--resume", "--quiet", "--out", str(out)], root / f"{label}.log")
            else:
                interrupted = True
                code = launch(kind, config, [*common, "--quiet", "--out", str(out)], root / f"{label}.log")
            row: dict[str, object] = {"exit": code}
            if code == 0 and (out / "empersona.json").is_file():
                row.update(compare(root / "single", out))
            ok = (code == 0 and interrupted and row.get("same_keys") is True and row.get("steps") == 12
                  and row.get("world_size") == 2 and isinstance(row.get("max_abs_diff"), float)
                  and float(row["max_abs_diff"]) < 1e-6 and (row.get("resumed_from") is not None) == resume)  # type: ignore[arg-type]
            failed |= not ok
            results[label] = {**row, "ok": ok}
            print(f"{label:22s} {json.dumps(row)}  {'ok' if ok else 'FAILED'}", flush=True)
    code = launch("fsdp", cpu_config(root, fsdp_activation_checkpointing="true"), [*common, "--quiet", "--out", str(root / "ac")],
                  root / "fsdp2-ac.log")
    refused = code != 0 and "fsdp_activation_checkpointing: false" in (root / "fsdp2-ac.log").read_text()
    failed |= not refused
    results["fsdp2-ac"] = {"exit": code, "refused": refused, "ok": refused}
    print(f"{'fsdp2-ac':22s} exit {code}, refused with its message: {refused}  {'ok' if refused else 'FAILED'}")
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if options.keep is None and not failed:
        shutil.rmtree(root, ignore_errors=True)  # kept on a failure, or when --keep names the folder
        print("all passed; the runs' folder was removed (--keep DIR keeps them)")
    else:
        print(f"runs and logs in {root}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
