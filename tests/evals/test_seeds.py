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
