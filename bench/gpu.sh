#!/usr/bin/env bash
# The GPU checks of issues 5 and 7, prepared for a lent H100 (the `device` tool): two calls.
#
# Before the call, here: `bash bench/gpu_prepare.sh` fills the git-ignored .whl/ (wheels) and
# .mirror/ (data, never committed).
# The calls, with carry [".whl", ".mirror"], back to back (a machine idle for 30 s is given back,
# and the 15 device minutes include its start, 30 s to a minute or more). Measured on 2026-11-27:
# generate, profile, adapters and sampler on the 1.5B shape; that evening (torch 2.11) also
# generate with hf/, empersona/ through inspect and engine-cp (compile_prefill), profile with the
# compiled prompt passes, and the per-row sampler (its first compile there failed on torch 2.11:
# sampling.py's _cumsum says why; mended, its 'check:' lines then said the hashed uniforms equal
# the CPU's and the compiled sampler picks the eager tokens on 98.6% of rows, 100% filtered). Not
# yet measured there: lora_merge and the stacked adapter factors (adapters), shrink, kv and the
# training variants, the CUDA tests (tests/provider/test_cuda.py), and the decode step compiled
# with compile_mode="max-autotune" (the engine-ma method). Next, after
# GPU_PREPARE_INSPECT=1 bash bench/gpu_prepare.sh (the probe test needs inspect-ai):
# "GPU_CHECK_SHAPES=1.5b GPU_CHECK_BATCHES=256 GPU_CHECK_METHODS=plain,engine,engine-ma
# GPU_CHECK_STEPS=generate bash bench/gpu.sh" (step limit 400 s, the autotuning's time being
# unknown: generate.py writes after each method, so plain's and engine's figures survive a cut;
# timeout_s 450, leaving the preamble ~40 s), then at once "GPU_CHECK_STEPS=tests bash bench/gpu.sh"
# (240 s; timeout_s 280) with what is left; each call ran 30-40 s beyond its command (start and
# transfers), and the first call's start about a minute more.
# plain "bash bench/gpu.sh" runs the generation of both shapes.
#
# Steps, each under its own time limit so a slow one cannot eat the others' time; every step's
# output goes to $OUT/gpu.log and its JSON to $OUT (generate.py writes after each method):
#   1. generation (64-token prompts, 128 new tokens: the setting issue 7 measured plain `generate`
#      in), Qwen2.5-1.5B shape at batch 256 and 32, then the 0.5B shape at batch 256:
#      plain `generate` against the engine (static cache, compiled decode step with CUDA graphs),
#      with the weight-bandwidth bound;
#   2. the engine's time at batch 256 on the first shape, phase by phase (bench/profile_engine.py:
#      prefill, decode step, sampler, loop; the prompt passes compiled against eager, one more
#      compile; attention variants; the kernels of the eager step, the prefill and the sampler;
#      73 s on the H100 before the compiled prompt passes were added);
#   2b. sampler: the next-token choice alone at batch 256, compiled, without logprobs and with 1 and
#      5 top logprobs, against the softmax-materialising form it replaced (bench/sampler.py);
#   3. training, 1.5B and 0.5B shapes: `empersona train`'s trainer against a plain PEFT loop,
#      then 3 profiled steps of each (top host operators and kernels); on the last shape also our
#      trainer with the model's own full-logit loss instead of TRL's fused LM head, with padded
#      batches, and (CUDA) with PyTorch's variable-length FlashAttention instead of SDPA per example
#      (bench/train.py --variants), to tell where its time goes;
#   4. kv: the engine's static caches within a byte budget that holds one of two (bench/kv_budget.py,
#      last shape): tokens/s against no budget, peak memory, the same tokens;
#   5. shrink (on request): rounds of answers of unequal length that go on with their live rows in
#      smaller buckets, against full rounds (bench/shrink.py, last shape, batch 128: a compile per
#      bucket; about 150 s on the 0.5B shape);
#   6. adapters (on request): one batch over the base and six random r=32 adapters, adapters in the
#      model's dtype, with their A factors stacked under the base weights, and against no adapters;
#      then all rows of one adapter with all six loaded, as products and merged into the base
#      weights (lora_merge) (bench/adapters.py, last shape, batch 256: five compiles; 196 s for
#      three on the 1.5B shape, 2026-11-27; float32 adapters, measured then, are left out);
#   7. tests (on request): the opt-in tests of the CUDA paths (pytest -m gpu tests/provider/test_cuda.py:
#      the compiled engine's greedy tokens against plain generate, base and two adapters, with eager
#      and compiled prompt passes; the compiled sampler over the real vocabulary; probe activations).
# GPU_CHECK_STEPS picks and orders the steps (default "generate" on CUDA, steps 1-6 on CPU);
# GPU_CHECK_BATCHES replaces the first shape's batch sizes (e.g. 256 alone: one compile less);
# GPU_CHECK_ADAPTER_VARIANTS the adapters step's variants (e.g. base,one-all,one-merged: three
# compiles, lora_merge against the products alone).
# The H100 image has torch, transformers, peft and accelerate but no trl, datasets, dill,
# multiprocess or pydantic: those come from .whl. It has no inspect-ai: generation runs --methods
# plain,engine unless .whl carries it (GPU_PREPARE_INSPECT=1), then also hf and empersona.
#
# Dry run on a CPU machine (tiny model, inductor without CUDA graphs; GPU_CHECK_COMPILE=off skips
# compiling), as tests/bench/test_gpu_script.py does:
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SHAPES=tiny OUT=/tmp/gpu-dry bash bench/gpu.sh
set -u -o pipefail

OUT=${OUT:-bench/results/gpu}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SHAPES=${GPU_CHECK_SHAPES:-1.5b 0.5b}
STEPS=${GPU_CHECK_STEPS:-$([ "$DEVICE" = cuda ] && echo "generate" || echo "generate profile sampler train kv shrink adapters")}
PYTHON=${PYTHON:-python3}
MIRROR=${GPU_CHECK_MIRROR:-.mirror}
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
: >"$LOG"

say() { echo "[$(date -u +%T)] $*" | tee -a "$LOG"; }

# step NAME SECONDS COMMAND...: run under a time limit, log everything, never stop the script
step() {
    local name=$1 limit=$2
    shift 2
    say "start $name (limit ${limit}s): $*"
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    say "end $name: rc $rc after $((SECONDS - began))s$([ $rc -eq 124 ] && echo ' (time limit)')"
}

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)  # fresh each run, outside $OUT (whose files the device tool sends back)
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl >>"$LOG" 2>&1; then
        export PYTHONPATH="$site"
    else
        say "wheel install failed (see above); going on with the installed packages"
    fi
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

# inspect's hf/ provider and empersona/ through inspect where inspect-ai is there (the H100 image
# has none: GPU_PREPARE_INSPECT=1 bash bench/gpu_prepare.sh carries it); GPU_CHECK_METHODS overrides
if "$PYTHON" -c "import inspect_ai" >/dev/null 2>&1; then
    METHODS=${GPU_CHECK_METHODS:-plain,engine,hf,empersona}
else
    METHODS=${GPU_CHECK_METHODS:-plain,engine}
fi
say "machine: $(uname -m), $(nproc) cores; generation methods $METHODS"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$LOG" 2>&1
"$PYTHON" - >>"$LOG" 2>&1 <<'EOF'
import importlib
for name in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "inspect_ai"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as err:  # report, the steps below say what fails
        print(f"{name} missing: {err}")
EOF

# per shape, in order: generation (the first shape at every batch size, the others at the
# largest only), then training; limits in seconds, the first shape's generation first since the
# targets are set on it. CUDA limits: generation 200 + 90 s, profile 200 s, training 100 + 70 s
# (110 s more on the last shape, which runs three variants), kv 150 s; a new batch size or shape costs
# a compile of about 50 s (H100, 2026-11-27), so the first shape runs batch 256 and 32 only.
if [ "$DEVICE" = cuda ]; then
    gen_args=(--device cuda --new-tokens 128 --prompt-tokens 64)
    all_batches=${GPU_CHECK_BATCHES:-256,32} largest_batch=256
    sampler_args=(--device cuda --compile)
    profile_args=(--device cuda --batch 256 --new-tokens 128 --prompt-tokens 64)
    train_args=(--device cuda --steps 20 --warmup 3 --profile-steps 3)
    kv_args=(--device cuda --batch 64)
    shrink_args=(--device cuda --batch 128 --max-new 256 --repeats 1)
    adapters_args=(--device cuda --batch 256 --new-tokens 64 --variants "${GPU_CHECK_ADAPTER_VARIANTS:-base,model,stacked,one-all,one-merged}")
    # hf/ runs plain generate again, empersona/ compiles once more: 90 s more where inspect is there
    gen_limits=(200 90)
    [[ $METHODS == *empersona* ]] && gen_limits=(290 150)
    # engine-cp compiles the prompt passes too (dynamic shapes): one compile more
    [[ $METHODS == *engine-cp* ]] && gen_limits=($((gen_limits[0] + 100)) $((gen_limits[1] + 100)))
    # engine-ma: a second engine whose decode step compiles with max-autotune (kernel choices timed)
    [[ $METHODS == *engine-ma* ]] && gen_limits=($((gen_limits[0] + 200)) $((gen_limits[1] + 200)))
    profile_limit=200 sampler_limit=90 train_limits=(100 70) variant_extra=110 kv_limit=150 shrink_limit=200
    adapters_limit=260 tests_limit=240
else
    gen_args=(--device cpu --new-tokens 16 --prompt-tokens 64 --compile "${GPU_CHECK_COMPILE:-on}")
    all_batches=${GPU_CHECK_BATCHES:-8,1} largest_batch=8
    sampler_args=(--device cpu --batch 4 --vocab 4096 --repeats 1 --steps 2)
    profile_args=(--device cpu --batch 8 --new-tokens 16 --prompt-tokens 64 --compile "${GPU_CHECK_COMPILE:-on}")
    train_args=(--device cpu --steps 2 --warmup 1 --profile-steps 1)
    kv_args=(--device cpu --batch 8 --rounds 1)
    shrink_args=(--device cpu --batch 8 --max-new 32 --short-share 0.6 --waves 1 --repeats 1)
    adapters_args=(--device cpu --batch 8 --new-tokens 8 --repeats 1 --one-model)
    gen_limits=(300 120) profile_limit=300 sampler_limit=60 train_limits=(120 120) variant_extra=60 kv_limit=120 shrink_limit=120
    adapters_limit=120 tests_limit=300
fi

generate_all() {
    local i=0 shape batches
    for shape in $SHAPES; do
        batches=$([ $i -eq 0 ] && echo "$all_batches" || echo "$largest_batch")
        step "generate-$shape" "${gen_limits[$((i < 1 ? i : 1))]}" "$PYTHON" bench/generate.py --shape "$shape" \
            "${gen_args[@]}" --batch-sizes "$batches" --methods "$METHODS" --out "$OUT/generate-$shape.json"
        i=$((i + 1))
    done
}
profile_first() {
    local shape
    for shape in $SHAPES; do break; done
    step "profile-$shape" "$profile_limit" "$PYTHON" bench/profile_engine.py --shape "$shape" \
        "${profile_args[@]}" --out "$OUT/profile-$shape.json"
}
sampler() {
    step sampler "$sampler_limit" "$PYTHON" bench/sampler.py "${sampler_args[@]}" --out "$OUT/sampler.json"
}
train_all() {
    local i=0 shape last variants limit
    for last in $SHAPES; do :; done
    for shape in $SHAPES; do
        variants=$([ "$shape" = "$last" ] && echo "full-loss,padded$([ "$DEVICE" = cuda ] && echo ,varlen)" || echo "")
        limit=$((${train_limits[$((i < 1 ? i : 1))]} + (${#variants} > 0 ? variant_extra : 0)))
        step "train-$shape" "$limit" "$PYTHON" bench/train.py --shape "$shape" \
            "${train_args[@]}" --variants "$variants" --mirror "$MIRROR" --out "$OUT/train-$shape.json"
        i=$((i + 1))
    done
}
kv_last() {
    local shape
    for shape in $SHAPES; do :; done
    step "kv-$shape" "$kv_limit" "$PYTHON" bench/kv_budget.py --shape "$shape" "${kv_args[@]}" --out "$OUT/kv-$shape.json"
}
shrink_last() {
    local shape
    for shape in $SHAPES; do :; done
    step "shrink-$shape" "$shrink_limit" "$PYTHON" bench/shrink.py --shape "$shape" "${shrink_args[@]}" --out "$OUT/shrink-$shape.json"
}
cuda_tests() {
    # the opt-in tests of the CUDA paths (tests/provider/test_cuda.py: compiled engine against plain
    # generate, compiled sampler, probe activations); pytest is in the H100 image
    step tests "$tests_limit" env EMPERSONA_TEST_DEVICE="$DEVICE" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider \
        tests/provider/test_cuda.py
}
adapters_last() {
    local shape
    for shape in $SHAPES; do :; done
    step "adapters-$shape" "$adapters_limit" "$PYTHON" bench/adapters.py --shape "$shape" "${adapters_args[@]}" \
        --out "$OUT/adapters-$shape.json"
}
for name in $STEPS; do
    case $name in
        generate) generate_all ;;
        profile) profile_first ;;
        sampler) sampler ;;
        train) train_all ;;
        kv) kv_last ;;
        shrink) shrink_last ;;
        adapters) adapters_last ;;
        tests) cuda_tests ;;
        *) say "unknown step '$name' in GPU_CHECK_STEPS (known: generate profile sampler train kv shrink adapters tests)" ;;
    esac
done
say "done; files: $(cd "$OUT" && ls | tr '\n' ' ')"
