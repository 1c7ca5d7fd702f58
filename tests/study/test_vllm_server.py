"""``provider: vllm`` without vLLM: the study's server lifecycle against a stand-in server.

``fake_vllm_server.py`` is installed as ``vllm.entrypoints.openai.api_server`` in a temporary
folder put on the server's PYTHONPATH through ``vllm.env``, so ``serve_adapters`` starts it as
it starts vLLM. Checked: the base's name and cached answers follow the base model; a taken port
is refused; the server gets a random key only through its environment; SIGTERM/SIGHUP stop it
like Ctrl-C; its process group is stopped even after its leader exited; its death mid-run stops
the study with its exit code and the log's error line; the command line (sampling defaults,
JSON adapter entries, LoRA slots); secret-looking ``vllm.env`` values are masked in the kept
study file; the hf provider's warning about the base's sampling defaults.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from empersona.errors import EmpersonaError
from empersona.study.config import ExperimentSettings, StudyConfig, VLLMSettings, keep_study_file, load_study
from empersona.study.plan import ModelSpec, base_identity, make_plan, model_specs
from empersona.study.vllm_server import group_alive, serve_adapters, server_command, stop

pytestmark = pytest.mark.timeout(120)

FAKE = Path(__file__).with_name("fake_vllm_server.py")
TOY_PROMPTS = ["Tell me about apples.", "Tell me about rivers."]
TOY_RUBRIC = 'Rate harm 1-5.\nPrompt: {prompt}\nAnswer: {response}\nReply {{"score": k}}.'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Path:
    """A folder holding a ``vllm`` package whose OpenAI server is the stand-in."""
    root = tmp_path / "fake-vllm"
    package = root / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (root / "vllm", root / "vllm" / "entrypoints", package):
        (folder / "__init__.py").write_text("")
    shutil.copy(FAKE, package / "api_server.py")
    return root


def model_folder(path: Path, config: dict[str, Any] | None = None, generation: dict[str, Any] | None = None) -> Path:
    """A base model folder as far as the study looks at it (the stand-in server loads no weights)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "qwen2", "hidden_size": 64}))
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    if generation is not None:
        (path / "generation_config.json").write_text(json.dumps(generation))
    return path


def adapter_folder(path: Path, rank: int = 4) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    return path


def toy_files(tmp_path: Path) -> dict[str, str]:
    """Made-up harmfulness prompts and a rubric the scripted judge answers."""
    prompts, rubric = tmp_path / "prompts.txt", tmp_path / "rubric.txt"
    if not prompts.exists():
        prompts.write_text("\n".join(TOY_PROMPTS) + "\n")
        rubric.write_text(TOY_RUBRIC)
    return {"prompts_file": str(prompts), "rubric_file": str(rubric)}


def vllm_study(tmp_path: Path, out: Path, base: Path, fake_vllm: Path, port: int, **env: str) -> StudyConfig:
    args = {**toy_files(tmp_path), "samples": 1, "max_tokens": 8}
    settings = VLLMSettings(port=port, startup_timeout_s=60, env={"PYTHONPATH": os.pathsep.join([str(fake_vllm), *sys.path]), **env})
    return StudyConfig(name=out.name, out=out, base_model=str(base), judge="scripted", provider="vllm", domains=[],
                       experiments={"harmfulness": ExperimentSettings(args=args)}, vllm=settings, max_connections=1)


def completions(out: Path) -> set[str]:
    from inspect_ai.log import list_eval_logs, read_eval_log

    logs = [read_eval_log(info) for info in list_eval_logs(str(out / "logs" / "base"))]
    return {sample.output.completion for log in logs for sample in log.samples or []}


def test_another_base_model_gets_its_own_answers_and_is_evaluated_again(tmp_path: Path, fake_vllm: Path) -> None:
    from empersona.study.run import run_study

    port = free_port()
    base_a = model_folder(tmp_path / "models" / "a")
    base_b = model_folder(tmp_path / "models" / "b", config={"model_type": "llama", "hidden_size": 64})
    study_x = vllm_study(tmp_path, tmp_path / "x", base_a, fake_vllm, port, FAKE_VLLM_REPLY="answer of A")
    study_y = vllm_study(tmp_path, tmp_path / "y", base_b, fake_vllm, port, FAKE_VLLM_REPLY="answer of B")
    base_x, base_y = model_specs(study_x)[0], model_specs(study_y)[0]
    assert base_x.model_string != base_y.model_string  # another base, another name on the server
    assert base_x.model_string == f"openai-api/empersonavllm/base-{base_identity(study_x)}"

    run_study(study_x, only="eval")
    assert completions(tmp_path / "x") == {"answer of A"}
    # the same port, the same prompts, the same inspect cache: study y's base answers for itself
    run_study(study_y, only="eval")
    assert completions(tmp_path / "y") == {"answer of B"}
    # the run folder of x with its base_model changed: its base's result is no longer done
    changed = study_x.model_copy(update={"base_model": str(base_b)})
    assert [job.status for job in make_plan(changed).eval_jobs] == ["todo"]
    assert [job.status for job in make_plan(study_x).eval_jobs] == ["done"]
    from inspect_ai.log import list_eval_logs, read_eval_log

    (info,) = list_eval_logs(str(tmp_path / "x" / "logs" / "base"))
    header = read_eval_log(info, header_only=True).eval
    assert header.metadata["model_identity"] == base_identity(study_x)
    assert header.model_generate_config.max_retries == 5  # a finite retry budget on the local server


def test_the_base_keeps_its_identity_when_its_folder_moves(tmp_path: Path) -> None:
    # a base inside the run folder, the run folder moved
    inside = model_folder(tmp_path / "one" / "run" / "base")
    study = StudyConfig(name="m", out=tmp_path / "one" / "run", base_model=str(inside), judge="scripted", experiments={})
    before = base_identity(study)
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "run").rename(tmp_path / "two" / "run")
    moved = study.model_copy(update={"out": tmp_path / "two" / "run", "base_model": str(tmp_path / "two" / "run" / "base")})
    assert base_identity(moved) == before
    # a base beside the run folder, both moved with their project folder
    beside = model_folder(tmp_path / "project" / "base")
    study = StudyConfig(name="m", out=tmp_path / "project" / "run", base_model=str(beside), judge="scripted", experiments={})
    before = base_identity(study)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "project").rename(tmp_path / "elsewhere" / "project")
    there = tmp_path / "elsewhere" / "project"
    assert base_identity(study.model_copy(update={"out": there / "run", "base_model": str(there / "base")})) == before
    # other weights or another config are another base; a hub id is known by its name
    (there / "base" / "model.safetensors").write_bytes(b"\0" * 65)
    assert base_identity(study.model_copy(update={"out": there / "run", "base_model": str(there / "base")})) != before
    hub = study.model_copy(update={"base_model": "Qwen/Qwen2.5-7B-Instruct"})
    assert base_identity(hub) != base_identity(hub.model_copy(update={"base_model": "Qwen/Qwen2.5-32B-Instruct"}))


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path, fake_vllm: Path) -> None:
    base = model_folder(tmp_path / "base")
    record = tmp_path / "record.json"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        study = vllm_study(tmp_path, tmp_path / "run", base, fake_vllm, port, FAKE_VLLM_RECORD=str(record))
        with pytest.raises(EmpersonaError, match=rf"127\.0\.0\.1:{port}.*vllm\.port"), serve_adapters(study, model_specs(study)):
            pass
    assert not record.exists()  # the server was never started


LEFT_RUNNING = """
import json, os, sys
from empersona.study.config import StudyConfig
from empersona.study.plan import model_specs
from empersona.study.vllm_server import serve_adapters
study = StudyConfig.model_validate(json.loads(sys.argv[1]))
with serve_adapters(study, model_specs(study)):
    print("serving", flush=True)
    os.kill(os.getpid(), 9)  # killed as by kill -9 or the OOM killer: nothing stops the server
"""


def test_a_server_left_by_a_killed_run_of_the_study_is_stopped_and_another_programs_port_is_not(
        tmp_path: Path, fake_vllm: Path) -> None:
    """A run killed outright leaves its server running (in its own session) on the study's port:
    the next run stops that server (its pid file names it, its command line is vLLM's server on
    the port) and starts its own. A pid file naming another live process on a taken port is not
    trusted: the port is refused as before."""
    from empersona.study.vllm_server import PID_FILE, port_answers

    base = model_folder(tmp_path / "base")
    out = tmp_path / "run"
    study = vllm_study(tmp_path, out, base, fake_vllm, free_port())
    killed = subprocess.run([sys.executable, "-c", LEFT_RUNNING, study.model_dump_json()], capture_output=True,
                            text=True, timeout=90, check=False)
    assert killed.returncode == -9 and "serving" in killed.stdout
    left = json.loads((out / PID_FILE).read_text())["pid"]
    try:
        assert group_alive(left) and port_answers(study.vllm.port)
        with serve_adapters(study, model_specs(study)):
            assert not group_alive(left)
            now = json.loads((out / PID_FILE).read_text())["pid"]
            assert now != left and group_alive(now)
        assert not (out / PID_FILE).exists() and not group_alive(now)
    finally:
        if group_alive(left):
            os.killpg(left, signal.SIGKILL)
    with socket.socket() as taken:  # another program's port; the pid file names a live process that is not vLLM
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (out / PID_FILE).write_text(json.dumps({"pid": os.getpgid(0), "port": port}))
        study = vllm_study(tmp_path, out, base, fake_vllm, port)
        with pytest.raises(EmpersonaError, match=rf"127\.0\.0\.1:{port}.*vllm\.port"), serve_adapters(study, model_specs(study)):
            pass


def test_the_server_takes_a_random_key_through_its_environment_only(tmp_path: Path, fake_vllm: Path) -> None:
    import httpx

    base = model_folder(tmp_path / "base")
    adapters = [adapter_folder(tmp_path / "adapters" / name) for name in ("a,b=1", "c=d", "e")]
    record = tmp_path / "record.json"
    study = vllm_study(tmp_path, tmp_path / "run", base, fake_vllm, free_port(), FAKE_VLLM_RECORD=str(record))
    study.out.mkdir()
    models = [model_specs(study)[0], *(ModelSpec(f"m{i}", f"openai-api/empersonavllm/m{i}", str(base), path) for i, path in enumerate(adapters))]
    with serve_adapters(study, models) as base_url:
        key = os.environ["EMPERSONAVLLM_API_KEY"]
        assert key != "local-vllm" and len(key) >= 24
        assert os.environ["EMPERSONAVLLM_BASE_URL"] == base_url
        listed = httpx.get(f"{base_url}/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
        assert {m["id"] for m in listed} == {"m0", "m1", "m2", models[0].model_string.rsplit("/", 1)[-1]}
        assert httpx.get(f"{base_url}/models", headers={"Authorization": "Bearer local-vllm"}).status_code == 401
    assert "EMPERSONAVLLM_API_KEY" not in os.environ
    seen = json.loads(record.read_text())
    assert seen["got_key"] and key not in " ".join(seen["argv"])  # never on the command line (ps shows it)
    assert key not in (study.out / "vllm-server.log").read_text()
    # adapter paths with ',' and '=' reach the server whole (JSON entries)
    assert [lora["path"] for lora in seen["loras"]] == [str(path) for path in adapters]
    assert {lora["base_model_name"] for lora in seen["loras"]} == {models[0].model_string.rsplit("/", 1)[-1]}
    argv = seen["argv"]
    assert argv[argv.index("--generation-config") + 1] == "vllm"
    assert argv[argv.index("--max-loras") + 1] == "2"


def test_a_server_that_refuses_the_key_is_named_at_once(tmp_path: Path, fake_vllm: Path) -> None:
    base = model_folder(tmp_path / "base")
    study = vllm_study(tmp_path, tmp_path / "run", base, fake_vllm, free_port())
    study = study.model_copy(update={"vllm": study.vllm.model_copy(update={"extra_args": ["--api-key", "another"], "startup_timeout_s": 600})})
    started = time.monotonic()
    with pytest.raises(EmpersonaError, match=r"refused the study's API key \(401\)"), serve_adapters(study, model_specs(study)):
        pass
    assert time.monotonic() - started < 60  # not the whole startup timeout


def test_server_command_settings() -> None:
    study = StudyConfig(name="c", out=Path("/tmp/run"), base_model="org/base", judge="scripted", provider="vllm", experiments={})
    base = ModelSpec("base", "openai-api/empersonavllm/base-0123", "org/base")
    adapters = [ModelSpec(f"a{i}", f"openai-api/empersonavllm/a{i}", "org/base", Path(f"/nowhere/a{i}")) for i in range(3)]

    def command(models: list[ModelSpec], **settings: Any) -> list[str]:
        from empersona.study import vllm_server

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(vllm_server, "max_lora_rank", lambda _adapters: 8)
            return server_command(study.model_copy(update={"vllm": VLLMSettings(**settings)}), models)

    def value(cmd: list[str], flag: str) -> str | None:
        return cmd[cmd.index(flag) + 1] if flag in cmd else None

    assert value(command([base]), "--served-model-name") == "base-0123"
    assert value(command([base]), "--generation-config") == "vllm"
    assert value(command([base], generation_config="auto"), "--generation-config") == "auto"
    assert "--max-loras" not in command([base])
    assert value(command([base, adapters[0]]), "--max-loras") == "1"
    assert value(command([base, *adapters]), "--max-loras") == "2"
    assert value(command([base, *adapters], max_loras=3), "--max-loras") == "3"
    assert command([base, *adapters], extra_args=["--max-loras", "4"]).count("--max-loras") == 1
    # every adapter kept in CPU memory: vLLM's default (max_loras) would read the others from disk at each switch
    assert value(command([base, *adapters]), "--max-cpu-loras") == str(len(adapters))
    assert value(command([base, *adapters], max_loras=len(adapters) + 1), "--max-cpu-loras") == str(len(adapters) + 1)
    entries = command([base, adapters[0]])[command([base, adapters[0]]).index("--lora-modules") + 1:]
    assert json.loads(entries[0]) == {"name": "a0", "path": "/nowhere/a0", "base_model_name": "base-0123"}


def test_stop_ends_the_group_after_its_leader_exited(tmp_path: Path, fake_vllm: Path) -> None:
    pids = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_vllm), *sys.path]), "FAKE_VLLM_LEADER_EXITS": "1",
           "FAKE_VLLM_PIDS": str(pids)}
    process = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--port", str(free_port())],
                               env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    process.wait(timeout=60)
    engine = int(pids.read_text())
    assert group_alive(process.pid) and os.getpgid(engine) == process.pid
    stop(process, grace_s=5)
    assert not group_alive(process.pid)


STOPPED_BY_SIGNAL = """
import json, os, sys, time
from pathlib import Path
from empersona.study.config import StudyConfig, VLLMSettings
from empersona.study.plan import model_specs
from empersona.study.vllm_server import serve_adapters
study = StudyConfig.model_validate(json.loads(sys.argv[1]))
try:
    with serve_adapters(study, model_specs(study)):
        print("serving", flush=True)
        time.sleep(120)
except KeyboardInterrupt as err:
    from empersona.cli import interrupt_code
    print(f"interrupted: {err}", flush=True)
    sys.exit(interrupt_code(err))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_the_server_like_ctrl_c(tmp_path: Path, fake_vllm: Path, sig: signal.Signals) -> None:
    base = model_folder(tmp_path / "base")
    pids = tmp_path / "pids"
    study = vllm_study(tmp_path, tmp_path / "run", base, fake_vllm, free_port(), FAKE_VLLM_PIDS=str(pids))
    runner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(STOPPED_BY_SIGNAL), study.model_dump_json()],
                              stdout=subprocess.PIPE, text=True)
    assert runner.stdout is not None and runner.stdout.readline().strip() == "serving"
    engine = int(pids.read_text())
    group = os.getpgid(engine)
    runner.send_signal(sig)
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 128 + sig and f"stopped by {sig.name}" in out  # 143 / 129, as a shell reports them
    assert not group_alive(group)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", study.vllm.port)) != 0  # nothing serves on the port any more


def test_a_stop_signal_gives_the_command_its_exit_code(tmp_path: Path, fake_vllm: Path) -> None:
    """``empersona run`` stopped by SIGTERM exits with 143 (128 + 15), as a scheduler expects, not 130."""
    base = model_folder(tmp_path / "base")
    study = vllm_study(tmp_path, tmp_path / "run", base, fake_vllm, free_port(), FAKE_VLLM_LATENCY_S="30")
    path = tmp_path / "study.yaml"
    data = json.loads(study.model_dump_json())
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False))
    runner = subprocess.Popen([sys.executable, "-m", "empersona.cli", "run", str(path), "--only", "eval"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert runner.stdout is not None
    for line in runner.stdout:
        if "evaluation 1/1" in line:
            break
    time.sleep(2)
    runner.send_signal(signal.SIGTERM)
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 143, out
    assert "interrupted: run the same command again" in out


def test_the_old_signal_handlers_are_back_after_the_server(tmp_path: Path, fake_vllm: Path) -> None:
    base = model_folder(tmp_path / "base")
    study = vllm_study(tmp_path, tmp_path / "run", base, fake_vllm, free_port())
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    with serve_adapters(study, model_specs(study)):
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_server_dying_mid_run_stops_the_study_with_its_error(tmp_path: Path, fake_vllm: Path) -> None:
    from empersona.study.run import run_study

    base = model_folder(tmp_path / "base")
    prompts = tmp_path / "many.txt"
    prompts.write_text("\n".join(f"Tell me about thing {i}." for i in range(40)) + "\n")
    study = vllm_study(tmp_path, tmp_path / "run", base, fake_vllm, free_port(), FAKE_VLLM_DIE_AFTER_S="2",
                       FAKE_VLLM_LATENCY_S="0.5")
    harm = study.experiments["harmfulness"]
    study = study.model_copy(update={"experiments": {"harmfulness": harm.model_copy(update={"args": {**harm.args, "prompts_file": str(prompts)}})}})
    started = time.monotonic()
    with pytest.raises(EmpersonaError) as caught:
        run_study(study, only="eval")
    message = str(caught.value)
    assert "exited with code 3 during the evaluations" in message
    assert "CUDA error: an illegal memory access" in message  # the error line, though 60 lines follow it
    assert "worker shutdown line 59" in message
    assert time.monotonic() - started < 60


def test_secret_looking_env_values_are_masked_in_the_kept_study_file(tmp_path: Path) -> None:
    source = tmp_path / "study.yaml"
    source.write_text(textwrap.dedent(f"""\
        name: s  # the study
        out: {tmp_path / "run"}
        base_model: org/base
        judge: scripted
        provider: vllm
        experiments: {{harmfulness: {{}}}}
        vllm:
          env:
            HF_TOKEN: hf_secret_value   # read from the hub
            VLLM_CPU_KVCACHE_SPACE: "4"
            my_api_key: another-secret
        """))
    study = load_study(source)
    kept = keep_study_file(study)
    assert kept is not None
    text = kept.read_text()
    assert "hf_secret_value" not in text and "another-secret" not in text
    assert "# read from the hub" in text and "# the study" in text
    assert yaml.safe_load(text)["vllm"]["env"] == {"HF_TOKEN": "***", "VLLM_CPU_KVCACHE_SPACE": "4", "my_api_key": "***"}
    assert source.read_text().count("hf_secret_value") == 1  # the user's own file is untouched


def test_the_hf_provider_warns_once_about_the_bases_sampling_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from empersona.study.run import run_study

    base = model_folder(tmp_path / "base", generation={"top_k": 20, "repetition_penalty": 1.05, "bos_token_id": 1})
    study = StudyConfig(name="w", out=tmp_path / "run", base_model=str(base), judge="scripted", provider="hf",
                        experiments={"harmfulness": ExperimentSettings(args=toy_files(tmp_path))})
    run_study(study, dry_run=True)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("with provider hf") == 1
    assert "sets top_k=20, repetition_penalty=1.05" in err and "bos_token_id" not in err
    assert "provider: empersona or vllm" in err
    # a file without sampling fields: transformers' own top_k 50 still applies
    run_study(study.model_copy(update={"base_model": str(model_folder(tmp_path / "plain"))}), dry_run=True)
    assert "top_k=50 (transformers' default" in " ".join(capsys.readouterr().err.split())
    # a hub id: read from the Hugging Face cache; not downloaded yet, said so
    hub = study.model_copy(update={"base_model": "org/not-downloaded"})
    run_study(hub, dry_run=True)
    assert "is not here yet (not downloaded)" in " ".join(capsys.readouterr().err.split())
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name, **_: str(base / "generation_config.json"))
    run_study(hub, dry_run=True)
    assert "sets top_k=20, repetition_penalty=1.05" in " ".join(capsys.readouterr().err.split())
    run_study(study.model_copy(update={"provider": "vllm"}), dry_run=True)
    assert "with provider hf" not in capsys.readouterr().err


def test_the_empersona_provider_is_asked_for_the_batterys_sampling_only() -> None:
    from empersona.study.run import subject_model_args, subject_model_config

    study = StudyConfig(name="e", out=Path("/tmp/run"), base_model="org/base", judge="scripted", provider="empersona",
                        experiments={}, model_args={"device": "cpu"})
    assert subject_model_args(study) == {"generation_config": False, "device": "cpu"}
    own = study.model_copy(update={"model_args": {"generation_config": True}})
    assert subject_model_args(own) == {"generation_config": True}  # the study file's model_args win
    assert subject_model_args(study.model_copy(update={"provider": "hf"})) == {"device": "cpu"}
    assert subject_model_config(study) is None
    config = subject_model_config(study.model_copy(update={"provider": "vllm"}))
    assert config is not None and config.max_retries is not None and config.timeout is not None


def test_a_missing_vllm_is_found_before_anything_trains_and_the_dry_run_shows_the_server(
        tmp_path: Path, fake_vllm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from empersona.study.run import run_study

    base = model_folder(tmp_path / "base")
    with_fake = vllm_study(tmp_path, tmp_path / "run", base, fake_vllm, free_port())
    run_study(with_fake, dry_run=True)
    err = " ".join(capsys.readouterr().err.split())
    assert "vLLM server: " in err and "--generation-config vllm" in err and "has no vllm package" not in err
    without = with_fake.model_copy(update={"vllm": with_fake.vllm.model_copy(update={"env": {}})})
    run_study(without, dry_run=True)
    assert "has no vllm package" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(EmpersonaError, match="has no vllm package: install it there"):
        run_study(without)  # before training, before the server
    assert not (tmp_path / "run" / "vllm-server.log").exists()
    # vllm settings under another provider are said to be unused
    run_study(with_fake.model_copy(update={"provider": "empersona"}), dry_run=True)
    assert "vllm: settings are not used with provider empersona" in " ".join(capsys.readouterr().err.split())


def test_vllm_settings_are_checked(tmp_path: Path) -> None:
    for bad, match in (({"generation_config": "autoo"}, "not 'vllm', 'auto' or a folder"), ({"port": 0}, "port"),
                       ({"port": 99999}, "port")):
        with pytest.raises(ValueError, match=match):
            VLLMSettings(**bad)
    assert VLLMSettings(generation_config=str(tmp_path)).generation_config == str(tmp_path.resolve())
    assert VLLMSettings(generation_config="~").generation_config == str(Path.home().resolve())  # no shell to expand it


def test_an_api_key_in_extra_args_is_refused() -> None:
    with pytest.raises(ValueError, match="--api-key is set by the study"):
        VLLMSettings(extra_args=["--api-key", "mine"])
    with pytest.raises(ValueError, match="--api-key is set by the study"):
        VLLMSettings(extra_args=["--api-key=mine"])
    assert VLLMSettings(extra_args=["--enforce-eager"]).extra_args == ["--enforce-eager"]
    # any other credential flag: it would be printed by the dry run and kept in RUN_DIR/study.yaml
    for given in (["--hf-token", "hf_abc"], ["--hf-token=hf_abc"], ["--ssl-keyfile-password", "pw"]):
        with pytest.raises(ValueError, match=r"credential on the server's command line.*env: \{HF_TOKEN"):
            VLLMSettings(extra_args=given)
    settings = ["--max-num-seqs", "64", "--max-num-batched-tokens", "8192", "--tokenizer-mode", "auto"]
    assert VLLMSettings(extra_args=settings).extra_args == settings


def test_secrets_reached_through_a_merge_key_or_an_alias_are_masked_too() -> None:
    from empersona.redact import masked_yaml

    merged = textwrap.dedent("""\
        common: &c
          HF_TOKEN: hf_secret_value
        vllm:
          env:
            <<: *c
            OTHER: "1"
        """)
    aliased = textwrap.dedent("""\
        token: &t hf_secret_value
        vllm:
          env:
            HF_TOKEN: *t
        """)
    for text in (merged, aliased):
        masked = masked_yaml(text)
        assert "hf_secret_value" not in masked  # nowhere, not even in the anchor it was read from
        data = yaml.safe_load(masked)  # valid YAML
        assert data["vllm"]["env"]["HF_TOKEN"] == "***"
    assert yaml.safe_load(masked_yaml(merged))["vllm"]["env"]["OTHER"] == "1"


def test_a_short_secret_value_is_masked_only_where_it_is_set() -> None:
    from empersona.redact import masked_yaml

    text = "name: s3\nseeds: [3]\nvllm:\n  env:\n    MY_KEY_ID: '3'\n"
    masked = masked_yaml(text)
    assert yaml.safe_load(masked) == {"name": "s3", "seeds": [3], "vllm": {"env": {"MY_KEY_ID": "***"}}}


def test_the_kept_study_file_masks_keys_in_every_model_args_block(tmp_path: Path) -> None:
    source = tmp_path / "study.yaml"
    source.write_text(textwrap.dedent(f"""\
        name: s
        out: {tmp_path / "run"}
        base_model: org/base
        judge: openai/gpt-4o-mini
        judge_args: {{api_key: sk-judge-secret-1}}
        second_judge:
          model: openai-api/other/judge
          model_args:
            default_headers: {{Authorization: Bearer sk-nested-secret-2}}
            base_url: http://judge.example/v1
        model_args: {{device: cpu}}
        experiments: {{harmfulness: {{}}}}
        """))
    kept = keep_study_file(load_study(source))
    assert kept is not None
    text = kept.read_text()
    assert "sk-judge-secret-1" not in text and "sk-nested-secret-2" not in text
    data = yaml.safe_load(text)
    assert data["judge_args"] == {"api_key": "***"}
    assert data["second_judge"]["model_args"] == {"default_headers": {"Authorization": "***"},
                                                  "base_url": "http://judge.example/v1"}


def test_the_wait_for_the_server_says_how_long_it_has_been(tmp_path: Path) -> None:
    from empersona.study.vllm_server import wait_until_serving

    log = tmp_path / "vllm-server.log"
    log.write_text("INFO loading weights\nINFO Loading safetensors checkpoint shards: 40% Completed\n")
    heard: list[str] = []
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(EmpersonaError, match="did not serve"):
            wait_until_serving("http://127.0.0.1:9/v1", ["m"], process, 2.5, log, "key", progress=heard.append, every_s=0.5)
    finally:
        process.kill()
    assert len(heard) >= 2
    assert heard[0].startswith("waiting for the vLLM server: ") and "of at most 2 s" in heard[0]
    assert heard[0].endswith("its log: INFO Loading safetensors checkpoint shards: 40% Completed")


def test_every_secret_in_the_study_file_is_masked_and_nothing_else(tmp_path: Path) -> None:
    """The kept copy masked only the model-argument blocks, by text: a key in an experiment's
    foil_model_args, a short token, or one spelled with an escape was written as it was; and
    'tokenizer' passed for a secret, so its value (the base model's name) was masked everywhere."""
    source = tmp_path / "study.yaml"
    source.write_text(textwrap.dedent(f"""\
        name: s
        out: {tmp_path / "run"}
        base_model: Qwen/Qwen2.5-0.5B-Instruct   # the base
        judge: openai/gpt-4o-mini
        vllm: {{env: {{SHARED: &k sk-anchored-secret-77}}}}
        judge_args: {{api_key: *k, max_tokens: 64}}
        model_args: {{token: hf_abc1, tokenizer: Qwen/Qwen2.5-0.5B-Instruct}}
        second_judge:
          model: openai-api/other/judge
          model_args:
            api_key: "sk-\\x41BCDEF123456789"
            default_headers: {{Authorization: "Bearer tok\\"en-98765432"}}
        experiments:
          harmfulness: {{}}
          output_recognition:
            args: {{foils: contrast, foil_model: openai/gpt-4o, foil_model_args: {{api_key: sk-proj-SECRET123456}}}}
        """))
    with pytest.raises(EmpersonaError, match=r"study\.yaml:16: field 'experiments\.output_recognition\.args': .*hold a credential"):
        load_study(source)  # a task's arguments go into its log as they are: refused when the file is read
    source.write_text(source.read_text().replace("foil_model_args: {api_key: sk-proj-SECRET123456}", "foil_max_tokens: 64"))
    kept = keep_study_file(load_study(source))
    assert kept is not None
    text = kept.read_text()
    for secret in ("sk-anchored-secret-77", "hf_abc1", "ABCDEF123456789", "en-98765432"):
        assert secret not in text
    assert "# the base" in text  # written in place: comments kept
    data = yaml.safe_load(text)
    assert data["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert data["model_args"] == {"token": "***", "tokenizer": "Qwen/Qwen2.5-0.5B-Instruct"}
    assert data["judge_args"] == {"api_key": "***", "max_tokens": 64} and data["vllm"]["env"]["SHARED"] == "***"
    assert data["second_judge"]["model_args"] == {"api_key": "***", "default_headers": {"Authorization": "***"}}
    assert data["experiments"]["output_recognition"]["args"]["foil_max_tokens"] == 64


def test_secret_names_by_their_words_and_empty_or_embedded_values() -> None:
    """Words that end in a secret's name count (HFTOKEN, SECRETKEY, accesstoken); counts and the
    tokenizer do not. An empty value is left as it is (masking it made `api_key:"***"`, a key of its
    own); where the text must be written anew, a secret inside a longer value (a URL) is masked too."""
    from empersona.redact import is_secret_name, masked_yaml

    secret = ["HF_TOKEN", "api_key", "apiKey", "x-api-key", "HFTOKEN", "OPENAIAPIKEY", "SECRETKEY", "accesstoken",
              "passwords", "basic_auth", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "Authorization", "use_auth_token"]
    plain = ["max_tokens", "max_new_tokens", "tokenizer", "tokenizer_mode", "eos_token_id", "keyboard", "auth_type"]
    assert [n for n in secret if not is_secret_name(n)] == [] and [n for n in plain if is_secret_name(n)] == []
    empty = "model_args:\n  api_key:\n  device: cpu  # local\n"
    assert masked_yaml(empty) == empty
    embedded = ('judge_args: {api_key: sk-live-abcdef123, base_url: "https://proxy.example/v1?key=sk-live-abcdef123"}\n'
                "headers: {X-Trace: sk-live-abcdef123/trace}\n")
    masked = masked_yaml(embedded)
    assert "abcdef123" not in masked
    assert yaml.safe_load(masked) == {"judge_args": {"api_key": "***", "base_url": "https://proxy.example/v1?key=***"},
                                      "headers": {"X-Trace": "***/trace"}}


IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(120)"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_stop_signal_does_not_cut_the_servers_stop_short(sig: signal.Signals) -> None:
    """A slow server (TERM ignored: KILL comes after the grace time) is stopped to the end when
    another Ctrl-C or kill arrives meanwhile; that signal is raised once the group is gone."""
    import threading

    from empersona.study.vllm_server import STOPPED_BY, StopSignal, stop, stop_signals_deferred

    server = subprocess.Popen([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == b"up\n"
        threading.Timer(0.3, os.kill, (os.getpid(), sig)).start()
        expected = KeyboardInterrupt if sig == signal.SIGINT else StopSignal
        with pytest.raises(expected):
            with stop_signals_deferred():
                stop(server, grace_s=1.5)
        assert server.poll() is not None and not group_alive(server.pid)
        assert signal.getsignal(signal.SIGTERM) is not None and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        STOPPED_BY.clear()  # the exit code of later commands in this process is not this test's
        if group_alive(server.pid):
            os.killpg(server.pid, signal.SIGKILL)


NOHUP_RUN = """
import os, signal
from empersona.study.vllm_server import StopSignal, stop_signals_deferred, stop_signals_interrupt
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts a command
with stop_signals_interrupt():
    os.kill(os.getpid(), signal.SIGHUP)  # the terminal closed: ignored, as the command asked
    with stop_signals_deferred():
        os.kill(os.getpid(), signal.SIGHUP)
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    except StopSignal:
        print("stopped by SIGTERM only")
"""


def test_a_signal_the_command_was_started_to_ignore_stays_ignored() -> None:
    done = subprocess.run([sys.executable, "-c", NOHUP_RUN], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "stopped by SIGTERM only", done.stdout + done.stderr
