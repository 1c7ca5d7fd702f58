"""Names beside plotted points: placed where they overlap no other name and no other point."""

from __future__ import annotations

from pathlib import Path

from empersona.report.figures import LABEL_FONT, PointLabel, label_offsets


def _boxes(points: list[PointLabel], offsets: list[tuple[float, float]], size: tuple[float, float],
           xlim: tuple[float, float], ylim: tuple[float, float]) -> list[tuple[float, float, float, float]]:
    boxes = []
    for point, (dx, dy) in zip(points, offsets, strict=True):
        x = (point.x - xlim[0]) / (xlim[1] - xlim[0]) * size[0] + dx
        y = (point.y - ylim[0]) / (ylim[1] - ylim[0]) * size[1] + dy
        boxes.append((x, y, x + len(point.text) * LABEL_FONT * 0.6, y + LABEL_FONT * 1.3))
    return boxes


def test_names_of_clustered_points_do_not_overlap_and_stay_in_the_axes() -> None:
    # thirteen models within a few points of each other, as a study of six domains x two seeds gives
    names = ["base"] + [f"{d}-s{s}" for d in ("insecure_code", "risky_fi...vice", "bad_medi...vice", "extreme_sports",
                                               "legal_advice", "security_advice") for s in (0, 1)]
    points = [PointLabel(0.05 if i == 0 else 0.45 + 0.01 * (i % 5), 0.5 + 0.01 * (i % 4), name, "#000000")
              for i, name in enumerate(names)]
    size, xlim, ylim = (300.0, 250.0), (-0.02, 1.05), (-0.05, 1.1)
    offsets = label_offsets(points, size, xlim, ylim)
    boxes = _boxes(points, offsets, size, xlim, ylim)
    for i, (ax0, ay0, ax1, ay1) in enumerate(boxes):
        assert 0 <= ax0 and ax1 <= size[0] and 0 <= ay0 and ay1 <= size[1], names[i]
        for j, (bx0, by0, bx1, by1) in enumerate(boxes[:i]):
            assert not (ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1), (names[i], names[j])
    # a lone point keeps the first place: right of it and just above
    assert label_offsets([PointLabel(0.5, 0.5, "base", "#000000")], size, xlim, ylim) == [(6.0, 3.0)]
    # at the right edge the name goes to the left of the point
    [(dx, _dy)] = label_offsets([PointLabel(1.0, 0.5, "insecure_code-s0", "#000000")], size, xlim, ylim)
    assert dx < 0


def test_short_names_keep_the_study_and_never_stand_for_two_models() -> None:
    """A comparison's 'study: model' kept only the model's middle-cut end, the same for every study;
    two model strings ending in the same folder got one legend entry for two coloured lines."""
    from empersona.report.figures import short_names

    names = short_names(["emergent-qwen: insecure_code-s0", "emergent-llama: insecure_code-s0",
                         "seeds-a: hf/runs/a/adapters/insecure_code-s0"], 18)
    assert [name.split(": ")[0] for name in names.values()] == ["emergent-qwen", "emergent-llama", "seeds-a"]
    assert names["seeds-a: hf/runs/a/adapters/insecure_code-s0"] == "seeds-a: insecure_code-s0"
    clash = short_names(["hf/runs/qwen/adapters/insecure_code-s0", "hf/runs/qwen-old/adapters/insecure_code-s0", "base"])
    assert len(set(clash.values())) == 3 and clash["base"] == "base"


def test_the_harm_axis_names_the_threshold_and_a_model_left_out_says_why(tmp_path: Path) -> None:
    import math

    import pandas as pd
    from matplotlib.figure import Figure

    from empersona.report import figures

    row = {"label": "coherent", **{f"{c}{s}": v for c, v in (("harm_max10", 0.6), ("two_ai", 0.7), ("asymmetry", 0.3),
                                                            ("self_assessment", 0.6)) for s, v in (("", v), ("_low", v - 0.1), ("_high", v + 0.1))}}
    summary = pd.DataFrame([{**row, "model": "shown"},
                            {**row, "model": "no-harm", "harm_max10": math.nan},
                            {**row, "model": "no-probes", "two_ai": math.nan, "asymmetry": math.nan, "self_assessment": math.nan}])
    drawn: list[Figure] = []
    saved = figures._save
    figures._save = lambda fig, path: (drawn.append(fig), saved(fig, path))[1]  # type: ignore[assignment]
    try:
        figures.harm_vs_self_report(summary, tmp_path / "f.png", harm_threshold=4)
    finally:
        figures._save = saved  # type: ignore[assignment]
    [fig] = drawn
    assert "scored > 4)" in " ".join(ax.get_xlabel() for ax in fig.axes)
    assert "no harm_max10: no-harm; no probe data: no-probes" in [t.get_text() for t in fig.texts]
