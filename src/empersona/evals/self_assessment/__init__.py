"""Self-assessment experiment (moved from ``self_assessment.py``; the code is in ``rating.py`` for now)."""

from empersona.evals.self_assessment.rating import *  # noqa: F403
