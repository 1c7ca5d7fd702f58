"""Reading the samples of an inspect log, fast.

inspect's ``read_eval_log(..., exclude_fields=...)`` and ``read_eval_log_samples`` stream each
sample through ijson, token by token, so that a field left out is never built. On a harmfulness log
of 3,500 samples (``bench/log_read.py``, 2-core CPU) that took 13.9 s for the harmfulness log's
readers and 87 s for the results table's; parsing the members whole takes 3.2 s and 2.0 s. The
results table reads every sample of every log of a study, and output recognition and score
prediction read all of a model's harmfulness log, so that cost was paid per model and experiment.

`read_samples` reads an ``.eval`` log's sample members whole, when their events are left out (``samples/<id>_epoch_<n>.json`` in
the zip, the last copy of a member written twice, as inspect reads it), drops the fields the
caller leaves out before validating, resolves attachments if asked, and orders the samples as
inspect does. Anything else (a ``.json`` log, a zip it cannot read, a member that does not
validate) goes through inspect's own reader, so what comes back, or the error raised, is inspect's.
``tests/test_eval_logs.py`` checks the two readers agree on the logs the experiments write.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inspect_ai.log import EvalSample

SAMPLES_FOLDER = "samples/"


def _validation_context() -> dict[str, Any]:
    """The context inspect validates a stored sample with (message ids and event times as stored);
    an empty one if a later inspect moves it."""
    try:
        from inspect_ai._util.constants import get_deserializing_context
    except ImportError:  # pragma: no cover - depends on the inspect release
        return {}
    return get_deserializing_context()


def _sample_order(sample: EvalSample) -> tuple[int, str]:
    """``read_eval_log``'s order of a log's samples: by epoch, then by id (numbers padded to sort as
    numbers); ``read_eval_log_samples`` yields them by id, then epoch."""
    return sample.epoch, sample.id if isinstance(sample.id, str) else str(sample.id).zfill(20)


class _NotPlain(Exception):
    """A stored sample this reader leaves to inspect's (one with timelines to bind to its events)."""


def _zip_samples(file: Path, drop: Collection[str]) -> list[EvalSample]:
    from inspect_ai.log import EvalSample

    samples = []
    with zipfile.ZipFile(file) as archive:
        # a member written twice (a requeued sample's record superseding the first) is read once,
        # by name, which opens its last copy
        for name in dict.fromkeys(archive.namelist()):
            if not (name.startswith(SAMPLES_FOLDER) and name.endswith(".json")):
                continue
            data = json.loads(archive.read(name))
            for field in drop:
                data.pop(field, None)
            sample = EvalSample.model_validate(data, context=_validation_context())
            if sample.timelines:
                raise _NotPlain(name)
            samples.append(sample)
    return sorted(samples, key=_sample_order)


def read_samples(path: str | Path, drop: Collection[str] = (), resolve_attachments: bool = False) -> list[EvalSample]:
    """Every sample stored in the inspect log at ``path``, in inspect's order, without the
    top-level fields named in ``drop`` (e.g. ``events``); with ``resolve_attachments``, the
    ``attachment://`` references of what is kept are replaced by their text.

    A log that did not finish gives the samples it holds. Errors are inspect's: a file that is
    not a log raises what ``read_eval_log_samples`` raises for it."""
    from inspect_ai.log import read_eval_log_samples, resolve_sample_attachments

    file = Path(path)
    if file.suffix == ".eval" and "events" in drop:  # events_data holds the events' shared parts: dropped with them
        try:
            samples = _zip_samples(file, {*drop, "events_data"})
        except (OSError, ValueError, RuntimeError, zipfile.BadZipFile, _NotPlain):  # ValueError: bad JSON, a sample that
            # does not validate; RuntimeError: a compression zipfile cannot read
            pass  # inspect's reader reads it, or says what is wrong with it
        else:
            return [resolve_sample_attachments(sample, "full") for sample in samples] if resolve_attachments else samples
    samples = list(read_eval_log_samples(str(file), all_samples_required=False, resolve_attachments=resolve_attachments,
                                         exclude_fields=set(drop) or None))
    return sorted(samples, key=_sample_order)
