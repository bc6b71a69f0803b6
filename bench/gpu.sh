#!/usr/bin/env bash
# Every check and benchmark on one GPU, in under 8 minutes, everything written to one folder.
#
#   bench/gpu.sh [OUT_DIR]             # OUT_DIR: $1, else $OUT, else results/gpu-<date>
#   bench/gpu.sh --dry-run [OUT_DIR]   # print the steps and their time limits, run nothing (works without a GPU)
#   ALLOW_CPU=1 BUDGET_S=60 bench/gpu.sh /tmp/x   # exercise the step / timeout / skip logic on a CPU machine
#
# Order: the environment (nvidia-smi, torch / triton / CUDA versions; stop if torch has no CUDA or triton is
# missing: nothing is installed here), the Triton kernels' correctness checks, then the benchmarks at their GPU
# defaults, the system ones first. Each step runs under `timeout`, within its own limit and within what is left
# of the whole budget (BUDGET_S, default 470 s), so one hang cannot eat the rest; a failed or timed-out step is
# recorded and the next one runs. The per-step limits are guesses until this script has run on a GPU.
# stdout and stderr go to OUT_DIR/log.txt; each benchmark writes OUT_DIR/<name>.json.
# Exit status: 0 when every step passed, 1 otherwise, 2 when the environment is unusable.
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR="${1:-${OUT:-results/gpu-$(date +%Y%m%d-%H%M%S)}}"
BUDGET_S="${BUDGET_S:-470}"
LOG="$OUT_DIR/log.txt"
FAILED=()
START=$SECONDS

say() { if [ "$DRY" = 1 ]; then echo "$*"; else echo "$*" | tee -a "$LOG"; fi; }

# step NAME LIMIT_S CMD...: run CMD under min(LIMIT_S, time left); record a failure, never stop
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$DRY" = 1 ]; then
    echo "[$name] timeout ${limit}s: $*"
    return 0
  fi
  if [ "$left" -lt 20 ]; then
    say "== $name: SKIPPED, ${left}s of the ${BUDGET_S}s budget left"
    FAILED+=("$name (skipped: out of time)")
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "== $name (limit ${limit}s, $((SECONDS - START))s elapsed): $*"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  say "== $name: exit $rc after $((SECONDS - t0))s"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    FAILED+=("$name (timed out after ${limit}s)")
  elif [ "$rc" != 0 ]; then
    FAILED+=("$name (exit $rc)")
  fi
}

if [ "$DRY" = 0 ]; then
  mkdir -p "$OUT_DIR"
  : >"$LOG"
fi
say "# bench/gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), out: $OUT_DIR"
if [ "$DRY" = 1 ]; then
  echo "[environment] nvidia-smi; python -c 'import torch, triton' (stop unless torch.cuda.is_available())"
else
  { nvidia-smi || echo "nvidia-smi: not available"; } 2>&1 | tee -a "$LOG"
  if ! python - 2>&1 <<'EOF' | tee -a "$LOG"; then
import os
import sys
try:
    import torch
except Exception as e:
    sys.exit(f"error: torch is not importable ({e}): this script installs nothing; use a python with torch+CUDA")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuda available: {torch.cuda.is_available()}")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as e:
    sys.exit(f"error: triton is not importable ({e}): this script installs nothing")
if not torch.cuda.is_available() and os.environ.get("ALLOW_CPU") != "1":
    sys.exit("error: torch sees no CUDA device (a CPU-only torch build, or no driver): nothing to benchmark")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
else:
    print("ALLOW_CPU=1: no CUDA device, running on the CPU (a test of this script, not a benchmark)")
for name in ("transformers", "flash_attn", "flashinfer", "liger_kernel", "vllm"):
    try:
        m = __import__(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as e:
        print(f"{name}: absent ({type(e).__name__})")
EOF
    say "environment unusable: stopping (see above)"
    exit 2
  fi
fi

# correctness first: a fast kernel that is wrong makes every number below meaningless
step check-sample 75 python bench/bench_sample.py --check
step check-linear-logprobs 75 python bench/bench_linear_logprobs.py --check
step check-paged-attention 75 python bench/bench_paged_attention.py --check
# system benchmarks (the engine against transformers' generate; a DPO step against the naive one)
step engine-throughput 270 python bench/engine_throughput.py --out "$OUT_DIR/engine_throughput.json"
step dpo-step 130 python bench/dpo_step.py --timeout 60 --out "$OUT_DIR/dpo_step.json"
# kernel microbenchmarks
step bench-sample 60 python bench/bench_sample.py --out "$OUT_DIR/sample.json"
step bench-linear-logprobs 90 python bench/bench_linear_logprobs.py --out "$OUT_DIR/linear_logprobs.json"
step bench-paged-attention 60 python bench/bench_paged_attention.py --out "$OUT_DIR/paged_attention.json"
# a peer, only where installed: vLLM in its own process, on the plain workload
if [ "$DRY" = 1 ] || python -c "import vllm" >/dev/null 2>&1; then
  step vllm-peer 200 python bench/engine_throughput.py --vllm --out "$OUT_DIR/vllm.json"
else
  say "== vllm-peer: not run (vllm is not installed)"
fi

[ "$DRY" = 1 ] && exit 0
say "# done in $((SECONDS - START))s"
if [ ${#FAILED[@]} -gt 0 ]; then
  say "FAILED: ${FAILED[*]}"
  exit 1
fi
say "all steps passed"
