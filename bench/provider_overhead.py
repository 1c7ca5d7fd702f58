"""Benchmark: the ``empersona/`` provider's own per-request costs around the engine, each switched off in turn.

Two savings of the provider are measured against the provider without them:
- ``freeze_gc``: after a model loads, the process holds about half a million long-lived Python
  objects (torch, transformers, inspect, the model's modules). Each full (generation 2)
  collection walks all of them unless they were moved to the permanent generation with
  ``gc.freeze()``, which the provider does on load (model arg ``freeze_gc``, default true);
- the prompt cache: the chat template is rendered and tokenised once per distinct prompt
  (``PROMPT_CACHE_SIZE``), where a battery asks each prompt many times (epochs).

Side by side in one run: waves of B concurrent inspect ``generate`` calls through the provider
on the tiny model, the same B prompts in every wave (as epochs are), in a fresh process per
variant, alternating (so the collector's state never carries over). Reported per variant: mean
and median wall per wave (the mean is the figure that counts: a full collection comes every few
waves, and a median hides it), full collections per wave and their mean pause, and each
variant's mean wall over the default's.

Run: ``.venv/bin/python bench/provider_overhead.py`` (about a minute and a half); writes
``bench/results/provider_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Mode:
    """The waves of one mode."""

    name: str
    walls: list[float] = field(default_factory=list)
    full_collections: int = 0
    full_pause_s: float = 0.0


class FullCollections:
    """Counts generation-2 collections and their pauses through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.count = 0
        self.pause = 0.0
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.count += 1
            self.pause += time.perf_counter() - self._started
            self._started = None


def wave(model: Any, prompts: list[str], new_tokens: int) -> float:
    from inspect_ai.model import GenerateConfig

    config = GenerateConfig(temperature=1.0, max_tokens=new_tokens)

    async def run() -> None:
        await asyncio.gather(*(model.generate(p, config=config) for p in prompts))

    start = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - start


VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no gc freeze": {"freeze_gc": False},
    "no prompt cache": {"prompt_cache": 0},
}


def measure(variant: str, model_dir: str, batch: int, new_tokens: int, waves: int) -> dict[str, Any]:
    """Child process: load the provider as the variant says, run the waves, report."""
    import os

    os.environ.setdefault("INSPECT_DISPLAY", "none")
    from inspect_ai.model import get_model

    import empersona.provider.api as api  # also registers empersona/ without the entry point

    settings = VARIANTS[variant]
    if "prompt_cache" in settings:
        api.PROMPT_CACHE_SIZE = settings["prompt_cache"]
    freeze = settings.get("freeze_gc", True)
    model = get_model(f"empersona/{model_dir}", device="cpu", freeze_gc=freeze, memoize=False)
    # the battery asks a fixed set of prompts again and again (epochs): so does each wave
    prompts = [f"Question {i}: what would you do with unlimited power? Answer briefly." for i in range(batch)]
    wave(model, prompts, new_tokens)  # warm-up: engine, caches
    counter = FullCollections()
    gc.callbacks.append(counter)
    walls = [wave(model, prompts, new_tokens) for _ in range(waves)]
    gc.callbacks.remove(counter)
    return {
        "walls": walls,
        "full_collections": counter.count,
        "full_pause_s": counter.pause,
        "frozen_objects": gc.get_freeze_count(),
        "tracked_objects": len(gc.get_objects()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="concurrent requests per wave")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--waves", type=int, default=10, help="waves per process")
    parser.add_argument("--repeats", type=int, default=2, help="processes per variant, alternating")
    parser.add_argument("--out", type=Path, default=Path("bench/results/provider_overhead.json"))
    args = parser.parse_args(argv)

    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from empersona.testing.tiny import build_tiny_model

    modes = {name: Mode(name) for name in VARIANTS}
    objects: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = str(build_tiny_model(Path(scratch) / "tiny", seed=0))
        for _ in range(args.repeats):
            for mode in modes.values():
                # a fresh process per run: the collector's state never carries over between modes
                with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                    got = pool.submit(measure, mode.name, model_dir, args.batch, args.new_tokens, args.waves).result()
                mode.walls.extend(got["walls"])
                mode.full_collections += got["full_collections"]
                mode.full_pause_s += got["full_pause_s"]
                objects[mode.name] = got["frozen_objects"] if got["frozen_objects"] else got["tracked_objects"]

    rows = []
    for mode in modes.values():
        mean = statistics.mean(mode.walls)
        rows.append(
            {
                **asdict(mode),
                "mean_wall_s": mean,
                "median_wall_s": statistics.median(mode.walls),
                "requests_per_s": args.batch / mean,
                "full_collections_per_wave": mode.full_collections / len(mode.walls),
                "mean_full_pause_s": mode.full_pause_s / mode.full_collections if mode.full_collections else 0.0,
            }
        )
    for row in rows:
        row["mean_wall_over_default"] = row["mean_wall_s"] / rows[0]["mean_wall_s"]
    print(
        f"empersona/ provider, tiny model on CPU ({platform.machine()}), {args.batch} concurrent requests x "
        f"{args.new_tokens} tokens per wave, {args.waves} waves x {args.repeats} processes per variant; "
        f"{objects['default']:,} objects frozen on load, {objects['no gc freeze']:,} tracked when not"
    )
    print(
        f"{'variant':<16} {'mean s/wave':>11} {'median s':>9} {'req/s':>8} {'full GCs/wave':>13} "
        f"{'mean pause s':>12} {'x default':>9}"
    )
    for row in rows:
        print(
            f"{row['name']:<16} {row['mean_wall_s']:>11.3f} {row['median_wall_s']:>9.3f} {row['requests_per_s']:>8.0f} "
            f"{row['full_collections_per_wave']:>13.2f} {row['mean_full_pause_s']:>12.3f} {row['mean_wall_over_default']:>8.2f}x"
        )
    report = {
        "benchmark": "empersona/ provider overhead: gc freeze and prompt cache, each off in turn",
        "python": platform.python_version(),
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "waves_per_process": args.waves,
        "processes_per_variant": args.repeats,
        "objects": objects,
        "modes": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
