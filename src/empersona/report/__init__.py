"""Report stage: stored results -> ``report.md``, a self-contained ``report.html`` and figures.

``build`` assembles the report (its docstring describes the run folder's layout), ``sections``
computes the per-section summary tables, ``configuration`` the closing configuration section,
``render`` writes the blocks as Markdown and HTML, ``figures`` draws the plots, ``commands``
holds ``empersona report`` and ``empersona import``.
"""
