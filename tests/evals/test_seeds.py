"""Each sample and each repeat of it draws from its own seed, so samples of different prompts
are not tied together by shared random numbers."""

from __future__ import annotations

from pathlib import Path

from empersona.evals.scoring import SEED_RANGE, repeat_seed


def test_a_seed_per_sample_and_repeat() -> None:
    seeds = {repeat_seed(0, epoch, f"q{i}") for i in range(300) for epoch in (1, 2)}
    assert len(seeds) >= 595 and all(0 <= s < SEED_RANGE for s in seeds if s is not None)  # type: ignore[operator]
    assert repeat_seed(0, 2, "q1") == repeat_seed(0, 1, "q1") + 1  # type: ignore[operator]
    assert repeat_seed(5, 1, "q1") == repeat_seed(5, 1, "q1") != repeat_seed(6, 1, "q1")
    assert repeat_seed(7, 3) == 9 and repeat_seed(None, 3, "q1") is None


def test_samples_of_different_prompts_draw_apart(tiny_model: Path, tmp_path: Path) -> None:
    """The tiny model's next-token distributions are nearly alike for every prompt: drawn with the
    same random numbers, different prompts gave the same answers (5 distinct of 24 before)."""
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.model import GenerateConfig

    from empersona.evals.scoring import seeded_generate

    dataset = MemoryDataset([Sample(input=f"Question number {i} about topic {i * 7}?", id=f"q{i}") for i in range(24)])
    task = Task(dataset=dataset, solver=seeded_generate(False, 0), config=GenerateConfig(temperature=1.0, max_tokens=2))
    [log] = inspect_eval(task, model=f"empersona/{tiny_model}", display="none", log_dir=str(tmp_path))
    assert log.status == "success" and log.samples is not None
    answers = [sample.output.completion for sample in log.samples]
    assert len(set(answers)) >= 20


def test_the_call_cache_tells_the_providers_sampling_apart(tiny_model: Path, tmp_path: Path) -> None:
    """A run resumed with the base's sampling defaults on (``generation_config``) is not served the
    answers cached by a run with them off, and the other way round."""
    import json
    import shutil

    from inspect_ai.model import ModelOutput

    from empersona.evals.commands import run_experiment
    from empersona.evals.scoring import sampling_scope
    from empersona.provider.api import release_engines

    assert sampling_scope("empersona//m", {}) == "model defaults"
    assert sampling_scope("empersona//m", {"generation_config": "false"}) is None
    assert sampling_scope("hf//m", {"generation_config": True}) is None
    base = shutil.copytree(tiny_model, tmp_path / "base")
    config = json.loads((base / "generation_config.json").read_text(encoding="utf-8"))
    (base / "generation_config.json").write_text(json.dumps({**config, "top_k": 1}), encoding="utf-8")  # visibly other
    prompts, rubric = tmp_path / "prompts.txt", tmp_path / "rubric.txt"
    prompts.write_text("\n".join(f"Tell me about fruit number {i}." for i in range(6)) + "\n")
    rubric.write_text('Rate harm.\nPrompt: {prompt}\nAnswer: {response}\nReply {{"score": k}}.')

    def judge(messages, tools, tool_choice, config):  # type: ignore[no-untyped-def]
        return ModelOutput.from_content(model="judge", content='{"score": 2}')

    def answers(generation_config: bool) -> list[str]:
        log = run_experiment(
            "harmfulness", f"empersona/{base}", judge="mockllm/judge", judge_args={"custom_outputs": judge},
            task_args={"samples": 1, "max_tokens": 6, "prompts_file": str(prompts), "rubric_file": str(rubric)},
            model_args={"generation_config": generation_config}, log_dir=tmp_path / "logs", display="none",
        )
        assert log.status == "success" and log.samples is not None
        return [s.output.completion for s in sorted(log.samples, key=lambda s: str(s.id))]

    try:
        plain = answers(False)
        with_defaults = answers(True)  # top_k 1 from the file: not the cached plain answers
        assert with_defaults != plain
        assert answers(False) == plain and answers(True) == with_defaults  # each served from its own cache
    finally:
        release_engines()
