#!/usr/bin/env bash
# Fills the two git-ignored folders that bench/gpu.sh needs on the lent H100 (run here, in the
# repository root, before the `device` call; needs PyPI for the pydantic wheels):
#   .whl/    wheels the H100 image lacks: trl, datasets, dill, multiprocess (from ../shared/wheels)
#            and pydantic with its own needs (downloaded for CPython 3.12 on x86-64, at the
#            versions installed here, so the GPU runs what the tests ran);
#   .mirror/ the data mirror (from ../shared/data; never committed).
# With GPU_PREPARE_INSPECT=1, .whl/ also gets inspect-ai (the version installed here) and the
# dependencies the image lacks (bench/carry_wheels.py: about 33 MB, the inspect-ai wheel without its
# sandbox tool binaries, the S3 stack left out but botocore, which inspect imports when it loads),
# so that bench/gpu.sh compares against inspect's hf/ provider and runs empersona/ through inspect.
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
platforms=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_34_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64
    --platform manylinux2010_x86_64 --platform manylinux_2_12_x86_64)
if [ "${GPU_PREPARE_INSPECT:-0}" = 1 ]; then
    inspect_version=$("$PYTHON" -c "from importlib.metadata import version; print(version('inspect-ai'))")
    downloads=$(mktemp -d)
    # shellcheck disable=SC2086  # one argument per pin; the pins hold pydantic at the tested versions
    "$PYTHON" -m pip download -q "${platforms[@]}" -d "$downloads" $pins "inspect-ai==$inspect_version"
    "$PYTHON" bench/carry_wheels.py "$downloads" .whl --skip boto3,s3transfer,aiobotocore,s3fs,aioitertools,debugpy | tail -1
    rm -rf "$downloads"
else
    # shellcheck disable=SC2086  # one argument per pin
    "$PYTHON" -m pip download -q --no-deps "${platforms[@]}" -d .whl $pins
fi
echo "ready: $(ls .whl | wc -l) wheels ($(du -sh .whl | cut -f1)), mirror $(du -sh .mirror | cut -f1)"
