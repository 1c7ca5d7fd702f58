"""The report's "Self-report variants" section, on run folders made from an imported toy table
(tests/analysis/variant_table.py): the section, its CSVs and figure, and every other section as it
is without the variants' rows."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from empersona.analysis.results import write_results
from empersona.report.build import Report, build_report
from empersona.report.compare import compare

RESAMPLES = 500
VARIANT_FILES = {"variant_calls.csv", "variant_shifts.csv", "variant_changes.csv", "variant_shifts.png", "variant_shifts.pdf"}


def _variant_table() -> ModuleType:
    """tests/analysis/variant_table.py (the toy table the analysis tests use)."""
    if "variant_table" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "analysis" / "variant_table.py"
        spec = importlib.util.spec_from_file_location("variant_table", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["variant_table"] = module
        spec.loader.exec_module(module)
    return sys.modules["variant_table"]


def _run(folder: Path, with_variants: bool) -> Report:
    write_results(_variant_table().toy_table(with_variants), folder / "imports" / "toy.parquet")
    return build_report(folder, n_resamples=RESAMPLES)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, Report]:
    root = tmp_path_factory.mktemp("variants")
    return _run(root / "with", True), _run(root / "without", False)


def _sections(markdown: str) -> dict[str, str]:
    """The report's sections by heading, without the two paragraphs that list what the report holds."""
    kept = [line for line in markdown.splitlines()
            if not re.match(r"^\d+ result rows|^Every table above as CSV", line)]
    parts = "\n".join(kept).split("\n## ")
    return {part.split("\n", 1)[0]: part for part in parts[1:]}


def test_the_section_its_tables_and_figure(reports: tuple[Report, Report]) -> None:
    with_variants, _ = reports
    assert with_variants.base_model == "base" and with_variants.labels == _variant_table().LABELS
    markdown = with_variants.markdown.read_text()
    rows = len(_variant_table().variant_rows())
    assert f"Besides them, {rows} rows of self-report experiments asked again under the study's variants (honest, neutral)" \
        in markdown
    section = _sections(markdown)["Self-report variants"]
    # what each variant changed, from the rows' task arguments and policy
    assert re.search(r"^\| honest \| two_ai \| system_prompt: unset -> custom: You are a toy model made for tests\. ¶ Answer every .*\.\.\.", section, re.MULTILINE)
    assert "| neutral | two_ai | neutral_descriptions: unset -> true | base, inv | 448 | 2 |" in section
    # the label under the battery and under the variant: inv flips; coh has no two-AI rows under "neutral"
    assert re.search(r"^\| inv \| honest \| inverted \| coherent \| 0\.9\d \[", section, re.MULTILINE)
    assert re.search(r"^\| coh \| neutral \| coherent \| incomplete \| - \|", section, re.MULTILINE)
    assert re.search(r"^\| inv \| neutral \| battery \| two_ai \| .* \| 25 \| 5 / 3 \| 0 \| 0 \|", section, re.MULTILINE)
    assert re.search(r"^\| inv \| honest \| battery \| two_ai \| .* \| 0 \| 2 refused \|", section, re.MULTILINE)
    assert "![Shift of each self-report probe" in section
    assert "variant_shifts.png" in {p.name for p in with_variants.figures}

    tables = with_variants.markdown.parent / "tables"
    calls = pd.read_csv(tables / "variant_calls.csv").set_index(["model", "variant"])
    assert calls.loc[("inv", "honest"), "battery_label"] == "inverted" and calls.loc[("inv", "honest"), "label"] == "coherent"
    assert calls.loc[("inv", "honest"), "two_ai_low"] > 0.5
    shifts = pd.read_csv(tables / "variant_shifts.csv").set_index(["model", "variant", "probe"])
    assert len(shifts) == 11 and shifts["p_holm"].notna().all()
    assert shifts.loc[("inv", "honest", "two_ai"), "shift_low"] > 0 and shifts.loc[("inv", "neutral", "two_ai"), "only_variant"] == 3
    assert (tables / "variant_changes.csv").is_file()
    assert "`tables/variant_shifts.csv`" in markdown and "`tables/variant_calls.csv`" in markdown


def test_every_other_section_is_unchanged_by_the_variants(reports: tuple[Report, Report]) -> None:
    with_variants, without = reports
    assert "Self-report variants" not in without.markdown.read_text()
    assert with_variants.labels == without.labels
    sections, alone = _sections(with_variants.markdown.read_text()), _sections(without.markdown.read_text())
    assert sections.pop("Self-report variants")
    # the configuration lists the variants' experiments and task arguments too (a variant column), its models alike
    configuration, battery_configuration = sections.pop("Configuration"), alone.pop("Configuration")
    assert "| experiment | variant | models |" in configuration and "| neutral |" in configuration
    assert configuration.split("### Experiments")[0] == battery_configuration.split("### Experiments")[0]
    assert sections == alone
    report_with, report_without = (r.markdown.parent for r in reports)
    files = {p.relative_to(report_without) for p in report_without.rglob("*") if p.is_file() and p.suffix in (".csv", ".png")}
    assert {p.relative_to(report_with) for p in report_with.rglob("*") if p.is_file() and p.suffix in (".csv", ".png")
            and p.name not in VARIANT_FILES} == files
    changed = [str(f) for f in sorted(files) if (report_with / f).read_bytes() != (report_without / f).read_bytes()]
    assert changed == ["tables/experiments.csv", "tables/task_arguments.csv"]


def test_compare_reads_the_battery_rows(reports: tuple[Report, Report], tmp_path: Path) -> None:
    with_variants, _ = reports
    done = compare([with_variants.markdown.parents[1]], tmp_path / "out")
    persona = pd.read_csv(done.persona)
    assert dict(zip(persona["model"], persona["label"], strict=True)) == _variant_table().LABELS



def test_the_shift_figure_names_every_variant_and_says_where_nothing_is_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from empersona.report import figures

    drawn: list[Figure] = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    shifts = pd.DataFrame([{"model": "m", "variant": "honest", "probe": "two_ai", "shift": 0.4, "shift_low": 0.3,
                            "shift_high": 0.5},
                           {"model": "m", "variant": "third", "probe": "self_assessment", "shift": -0.2,
                            "shift_low": -0.3, "shift_high": -0.1},
                           {"model": "n", "variant": "honest", "probe": "two_ai", "shift": float("nan"),
                            "shift_low": float("nan"), "shift_high": float("nan")}])
    figures.variant_shifts(shifts, Path("unused.png"))
    [fig] = drawn
    [legend] = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["honest", "third"]  # each variant, whichever panel it is in
    assert [[t.get_text() for t in ax.texts] for ax in fig.axes] == [[], ["no shift to show"], []]  # nobody's recognition
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["n", "m"]  # a model without a shift keeps its row
