"""Loading a training domain as chat rows for the trainer, split into train and holdout.

Each conversation gets the system turn of the shared policy (``evals.policy.chat_messages``, the
same function evaluation uses); the holdout is drawn with the run's seed, and the rows trained on
are hashed into the run's ``DatasetInfo``.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from empersona.errors import EmpersonaError, located
from empersona.train.metadata import DatasetInfo
from empersona.train.recipe import TrainConfig


@dataclass(frozen=True)
class TrainingData:
    """Chat rows ready for the trainer, with where they came from."""

    train: list[dict[str, Any]]
    holdout: list[dict[str, Any]]
    info: DatasetInfo


def load_training_data(config: TrainConfig) -> TrainingData:
    """The domain's conversations under the system-prompt policy, split into train and holdout.

    ``load_domain`` checks every row; a malformed one fails here with its file, line and field.
    """
    from empersona.data.domains import load_domain
    from empersona.evals.policy import chat_messages

    domain = load_domain(config.domain, path=config.domain_path, limit=config.limit, revision=config.hub_revision)
    rows = [{"messages": chat_messages(config.system_prompt, record["messages"])} for record in domain.records]
    if not rows:
        raise EmpersonaError(located(domain.source, None, None, "no training rows", "Use a non-empty domain file"))
    holdout_n = round(len(rows) * config.holdout)
    if config.holdout > 0:
        holdout_n = min(max(holdout_n, 1), len(rows) - 1)
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)
    held = set(order[:holdout_n])
    trained_on = [row for i, row in enumerate(rows) if i not in held]
    # the rows trained on, in file order (with no holdout: every row, as before)
    canonical = "\n".join(json.dumps(row, sort_keys=True, ensure_ascii=False) for row in trained_on)
    info = DatasetInfo(
        domain=domain.name,
        source=domain.source,
        sha256=domain.sha256,
        rows=len(rows),
        rows_sha256=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        train_rows=len(rows) - holdout_n,
        holdout_rows=holdout_n,
    )
    return TrainingData(
        train=trained_on,
        holdout=[rows[i] for i in sorted(held)],
        info=info,
    )
