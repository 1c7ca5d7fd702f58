"""Report stage: stored results -> ``report.md``, a self-contained ``report.html`` and figures.

``build`` assembles the report (its docstring describes the run folder's layout), ``figures``
draws the plots, ``commands`` holds ``empersona report`` and ``empersona import``.
"""
