"""Pick, from a folder of downloaded wheels, the ones a lent H100 needs carried (``bench/gpu_prepare.sh``).

The device image ships a fixed set of Python packages (listed in ``bench/h100_image_packages.txt``,
read off the device library's description of the image); a call may carry 64 MiB in all. This
copies into the target folder only the wheels whose project the image lacks, leaves out projects
our benchmarks never import (``--skip``), and repacks the inspect-ai wheel without its sandbox
tool binaries (29 of its 34 MB; they serve sandboxed agent tasks, not model evaluations).

Run: ``python bench/carry_wheels.py DOWNLOADS .whl --skip boto3,s3transfer``; prints what it kept.
"""

from __future__ import annotations

import argparse
import re
import shutil
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DROPPED_PREFIXES = {"inspect_ai": ("inspect_ai/binaries/",)}


def project(wheel: Path) -> str:
    """The normalised project name of a wheel file (PEP 503: runs of -_. become -, lower case)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-", 1)[0]).lower()


def image_packages(path: Path) -> set[str]:
    """Project names in the image's package list (one per line; # starts a comment)."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.add(re.sub(r"[-_.]+", "-", name).lower())
    return names


def repack_without(source: Path, target: Path, prefixes: tuple[str, ...]) -> int:
    """Copy wheel ``source`` to ``target`` without the members under ``prefixes`` (and their
    RECORD lines); returns the bytes left out (compressed)."""
    dropped = 0
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            if info.filename.startswith(prefixes):
                dropped += info.compress_size
                continue
            data = old.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                kept = [line for line in data.decode().splitlines() if not line.startswith(prefixes)]
                data = ("\n".join(kept) + "\n").encode()
            new.writestr(info, data)
    return dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("downloads", type=Path, help="folder of wheels (a pip download with dependencies)")
    parser.add_argument("target", type=Path, help="folder the kept wheels are copied into (.whl)")
    parser.add_argument("--image", type=Path, default=HERE / "h100_image_packages.txt")
    parser.add_argument("--skip", default="", help="comma-separated projects to leave out although the image lacks them")
    args = parser.parse_args(argv)

    image = image_packages(args.image)
    skip = {re.sub(r"[-_.]+", "-", s.strip()).lower() for s in args.skip.split(",") if s.strip()}
    args.target.mkdir(parents=True, exist_ok=True)
    kept = 0
    for wheel in sorted(args.downloads.glob("*.whl")):
        name = project(wheel)
        if name in image or name in skip:
            continue
        out = args.target / wheel.name
        prefixes = DROPPED_PREFIXES.get(wheel.name.split("-", 1)[0])
        if prefixes:
            dropped = repack_without(wheel, out, prefixes)
            print(f"kept {wheel.name} without {', '.join(prefixes)} ({dropped / 1e6:.1f} MB left out)")
        else:
            shutil.copy2(wheel, out)
            print(f"kept {wheel.name}")
        kept += out.stat().st_size
    print(f"{kept / 1e6:.1f} MB of wheels kept in {args.target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
