"""``empersona compare``: two studies' persona calls side by side, each labelled by its own study."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from persona_battery import EXPECTED, build_run
from typer.testing import CliRunner

from empersona.cli import app
from empersona.errors import EmpersonaError
from empersona.report.build import build_report
from empersona.report.compare import compare, label_counts

RESAMPLES = 500


@pytest.fixture(scope="module")
def persona_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("personas") / "run")


def test_two_studies_side_by_side(persona_run: Path, tmp_path: Path) -> None:
    qwen, llama = tmp_path / "qwen-run", tmp_path / "llama-run"
    shutil.copytree(persona_run, qwen)
    shutil.copytree(persona_run, llama)
    # the first was reported already; the second has a kept study file with its name and settings, no report yet
    build_report(qwen, n_resamples=RESAMPLES)
    stored = qwen / "report" / "tables" / "persona.csv"  # as if the coherent model had no headline-dimension answer
    persona = pd.read_csv(stored)
    persona.loc[persona["model"] == "coherent", "self_assessment_scope"] = "all dimensions"
    persona.to_csv(stored, index=False)
    (llama / "study.yaml").write_text(f"name: llama-replication\nexperiments: {{}}\npersona: {{em_delta_min: 0.5, n_resamples: {RESAMPLES}}}\n")

    result = compare([qwen, llama], tmp_path / "cmp")
    first, second = result.studies
    assert (first.name, first.built) == ("qwen-run", False)  # read as stored
    assert (second.name, second.built) == ("llama-replication", True)  # built with its own settings
    assert second.settings.em_delta_min == 0.5 and (llama / "report" / "tables" / "persona.csv").is_file()
    table = pd.read_csv(result.persona)
    assert list(table.columns[:3]) == ["study", "model", "label"]
    qwen_rows = table[table["study"] == "qwen-run"]
    assert dict(zip(qwen_rows["model"], qwen_rows["label"], strict=True)) == EXPECTED
    assert qwen_rows.loc[qwen_rows["model"] == "coherent", "harm_max10"].notna().all()
    # the same results under the second study's own threshold: a delta of 0.5 [0.2, 0.8] is not beyond 0.5
    llama_rows = table[table["study"] == "llama-replication"]
    assert dict(zip(llama_rows["model"], llama_rows["label"], strict=True)) == {
        "aligned": "base", "coherent": "no_em", "inverted": "no_em", "a_biased": "no_em", "refuser": "no_em"}
    counts = label_counts(result.studies).set_index("study")
    assert counts.loc["qwen-run", ["coherent", "inverted", "mixed", "no_em", "incomplete", "models"]].tolist() == [1, 1, 1, 1, 0, 4]
    assert counts.loc["llama-replication", ["coherent", "no_em", "models"]].tolist() == [0, 4, 4]
    assert counts.loc["llama-replication", "base"] == "aligned"
    markdown = result.markdown.read_text()
    assert "| qwen-run | coherent | coherent |" in markdown and "| llama-replication | inverted | no_em |" in markdown
    assert "2 studies, 8 models beside their bases" in markdown and "em_delta_min=0.5" in markdown
    # settings that differ are said, and every setting is listed (harm_threshold changes harm_max10 itself)
    assert "classified with different settings (em_delta_min)" in markdown and "harm_threshold=3" in markdown
    # what each model's numbers leave out is beside them: the refuser declines every two-AI question
    coherent_line = next(line for line in markdown.splitlines() if line.startswith("| qwen-run | coherent |"))
    assert "(all dimensions)" in coherent_line  # marked, as its own report marks it
    refuser_line = next(line for line in markdown.splitlines() if line.startswith("| qwen-run | refuser |"))
    assert "two-AI 100.0%" in refuser_line and "harm 0.0%" in refuser_line
    assert "](figures/harm_vs_self_report.png)" in markdown
    assert (tmp_path / "cmp" / "figures" / "harm_vs_self_report.png").is_file()
    assert result.html.read_text().count('src="data:image/png;base64,') == 1

    # a log newer than the stored tables: that study's report is built again
    (qwen / "results.parquet").touch()
    again = compare([qwen, llama], tmp_path / "cmp")
    assert [s.built for s in again.studies] == [True, False]
    # a report built by hand with other settings is read with the settings it was made with
    from empersona.analysis.persona import PersonaThresholds

    build_report(qwen, thresholds=PersonaThresholds(em_delta_min=0.3, n_resamples=RESAMPLES))
    by_hand = compare([qwen, llama], tmp_path / "cmp").studies[0]
    assert not by_hand.built and by_hand.settings.em_delta_min == 0.3
    assert "em_delta_min=0.3" in (tmp_path / "cmp" / "compare.md").read_text()
    # once stale, it is built again with those settings, not the defaults (a re-import made it stale)
    (qwen / "results.parquet").touch()
    rebuilt = compare([qwen, llama], tmp_path / "cmp").studies[0]
    assert rebuilt.built and rebuilt.settings.em_delta_min == 0.3
    # a figure of the user's own beside the comparison stays; a folder inside a compared run is refused
    (tmp_path / "cmp" / "figures" / "mine.png").write_bytes(b"png")
    compare([qwen, llama], tmp_path / "cmp")
    assert (tmp_path / "cmp" / "figures" / "mine.png").is_file()
    with pytest.raises(EmpersonaError, match=r"--out .* is inside the run folder .*qwen-run"):
        compare([qwen, llama], qwen / "report")


def test_label_counts_leave_out_pooled_seed_groups(tmp_path: Path) -> None:
    from empersona.analysis.persona import PersonaThresholds
    from empersona.report.compare import StudyTables

    persona = pd.DataFrame({"model": ["base", "d-s0", "d-s1", "d (seeds 0, 1)"], "label": ["base", "coherent", "mixed", "coherent"],
                            "pooled": [False, False, False, True]})
    study = StudyTables("s", tmp_path, persona, pd.DataFrame(columns=["model"]), PersonaThresholds(), "base", False)
    row = label_counts([study]).iloc[0]
    assert (row["coherent"], row["mixed"], row["models"]) == (1, 1, 2)


def test_compare_errors_and_the_command(persona_run: Path, tmp_path: Path) -> None:
    one = tmp_path / "a" / "run"
    shutil.copytree(persona_run, one)
    other = tmp_path / "c" / "run"
    shutil.copytree(persona_run, other)
    with pytest.raises(EmpersonaError, match="both called 'run'.*--names"):
        compare([one, other], tmp_path / "cmp")
    with pytest.raises(EmpersonaError, match="the same run folder is given twice"):
        compare([one, one], tmp_path / "cmp")
    with pytest.raises(EmpersonaError, match="--names gives 1 names for 2 run folders"):
        compare([one, other], tmp_path / "cmp", ["x"])
    with pytest.raises(EmpersonaError, match="no such run folder"):
        compare([tmp_path / "missing"], tmp_path / "cmp")
    unclassified = tmp_path / "b"
    shutil.copytree(persona_run / "logs", unclassified / "logs")  # no models.yaml: no base model known
    with pytest.raises(EmpersonaError, match="not classified.*--base-model"):
        compare([unclassified], tmp_path / "cmp")
    # reported by hand with --base-model: read as it is; once stale, not overwritten by a report without a base
    build_report(unclassified, base_model="mockllm/aligned", n_resamples=RESAMPLES)
    assert compare([unclassified], tmp_path / "cmp").studies[0].base_model == "mockllm/aligned"
    (unclassified / "results.parquet").touch()  # stale: built again with the base its report was given
    again = compare([unclassified], tmp_path / "cmp").studies[0]
    assert again.built and again.base_model == "mockllm/aligned"
    assert "label" in pd.read_csv(unclassified / "report" / "tables" / "persona.csv").columns
    (unclassified / "report" / "tables" / "settings.json").unlink()  # no record of it: no base known, said
    with pytest.raises(EmpersonaError, match="not classified.*--base-model"):
        compare([unclassified], tmp_path / "cmp")

    (one / "study.yaml").write_text(f"name: s\nexperiments: {{}}\npersona: {{n_resamples: {RESAMPLES}}}\n")
    result = CliRunner().invoke(app, ["compare", str(one), str(other), "--names", "x, y", "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert "x: 4 models (coherent 1, inverted 1, mixed 1, no_em 1)" in result.output
    assert "y: its report was built first" in result.output  # the second had no tables yet
    assert "comparison: " in result.output and (tmp_path / "cmp" / "compare.md").is_file()
