#!/usr/bin/env bash
# Fills the two git-ignored folders that bench/gpu.sh needs on the lent H100 (run here, in the
# repository root, before the `device` call; needs PyPI for the pydantic wheels):
#   .whl/    wheels the H100 image lacks: trl, datasets, dill, multiprocess (from ../shared/wheels)
#            and pydantic with its own needs (downloaded for CPython 3.12 on x86-64, at the
#            versions installed here, so the GPU runs what the tests ran);
#   .mirror/ the data mirror (from ../shared/data; never committed).
# Then: `run` with command "bash bench/gpu.sh", carry [".whl", ".mirror"].
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
SHARED=${SHARED:-../shared}
mkdir -p .whl .mirror
cp "$SHARED"/wheels/*.whl .whl/
cp -r "$SHARED"/data/. .mirror/
pins=$("$PYTHON" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")))
PY
)
# shellcheck disable=SC2086  # one argument per pin
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
echo "ready: $(ls .whl | wc -l) wheels ($(du -sh .whl | cut -f1)), mirror $(du -sh .mirror | cut -f1)"
