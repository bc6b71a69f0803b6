#!/usr/bin/env bash
# Every check and benchmark on one GPU in under 8 minutes, each result written to OUT_DIR as it is produced.
#
#   bash bench/gpu.sh [OUT_DIR]             # OUT_DIR: $1, else $OUT, else results/gpu-<date>
#   bash bench/gpu.sh --dry-run [OUT_DIR]   # the steps and their time limits; runs nothing (works anywhere)
#   ALLOW_CPU=1 BUDGET_S=60 bash bench/gpu.sh /tmp/x   # exercise the step / timeout logic on a CPU machine
#
# 1. Preflight, in seconds, one line saying what is missing when something is: python3; torch with a CUDA device
#    (on a machine without one this script stops here, at once); every module the steps import (metareward and
#    its dependencies, the bench scripts); a C compiler and Python.h (Triton builds its launcher with them); one
#    trivial Triton kernel launched and checked. Nothing is installed.
# 2. The Triton kernels' correctness checks: a fast kernel that is wrong makes every number after it meaningless.
# 3. The kernel microbenchmarks (their JSON tables are rewritten after every row).
# 4. The system benchmarks (the engine against transformers' generate; a DPO step against the naive one).
# 5. vLLM as a peer, only where installed and only in the time left.
# Each step runs under `timeout` (its whole process group) within its own limit and within what is left of the
# budget (BUDGET_S, default 470 s; the limits below sum to 460 s); a failed or timed-out step is recorded and the
# next one runs. The limits are estimates until this script has run on a GPU: OUT_DIR/steps.tsv records each
# step's time so the next run can size them.
# Files: OUT_DIR/log.txt (everything), OUT_DIR/<step>.log, OUT_DIR/<benchmark>.json, OUT_DIR/steps.tsv.
# Exit status: 0 when every step passed, 1 otherwise, 2 when the machine cannot run the steps.
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR="${1:-${OUT:-results/gpu-$(date +%Y%m%d-%H%M%S)}}"
BUDGET_S="${BUDGET_S:-470}"
LOG="$OUT_DIR/log.txt"
FAILED=()
START=$SECONDS

# name, limit (s), command: the order is the order they run in
STEPS=(
  "check-sample|60|python3 bench/bench_sample.py --check"
  "check-linear-logprobs|45|python3 bench/bench_linear_logprobs.py --check"
  "check-paged-attention|45|python3 bench/bench_paged_attention.py --check"
  "bench-sample|50|python3 bench/bench_sample.py --reps 20 --out $OUT_DIR/sample.json"
  "bench-linear-logprobs|60|python3 bench/bench_linear_logprobs.py --reps 5 --out $OUT_DIR/linear_logprobs.json"
  "bench-paged-attention|40|python3 bench/bench_paged_attention.py --reps 20 --out $OUT_DIR/paged_attention.json"
  "engine-throughput|100|python3 bench/engine_throughput.py --reps 1 --hf-reps 1 --out $OUT_DIR/engine_throughput.json"
  "dpo-step|60|python3 bench/dpo_step.py --reps 3 --timeout 28 --out $OUT_DIR/dpo_step.json"
)

if [ "$DRY" = 1 ]; then
  total=0
  echo "[preflight] python3, torch + CUDA device, the steps' imports, C compiler + Python.h, one Triton kernel"
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$s"
    echo "[$name] timeout ${limit}s: $cmd"
    total=$((total + limit))
  done
  echo "[vllm-peer] only if vllm is installed, in the time left: python3 bench/engine_throughput.py --vllm"
  echo "limits: ${total}s of the ${BUDGET_S}s budget"
  [ "$total" -le "$BUDGET_S" ] || { echo "error: the step limits (${total}s) exceed the budget (${BUDGET_S}s)"; exit 1; }
  exit 0
fi

mkdir -p "$OUT_DIR"
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }
fail() { echo "$*" | tee -a "$LOG" >&2; exit 2; }

command -v python3 >/dev/null 2>&1 || fail "error: python3 not found on PATH: nothing was run"

# preflight: one line on failure (exit 2), a few lines of versions on success. A file, not stdin: @triton.jit
# reads its function's source.
PRE_DIR=$(mktemp -d)
trap 'rm -rf "$PRE_DIR"' EXIT
cat >"$PRE_DIR/preflight.py" <<'EOF'
import os
import shutil
import sys
import sysconfig
import traceback

def stop(msg):
    print(f"error: {msg}; nothing was run")
    sys.exit(2)

try:
    import torch
except Exception as e:
    stop(f"python3 ({sys.executable}) cannot import torch ({type(e).__name__}: {e})")
if not torch.cuda.is_available() and os.environ.get("ALLOW_CPU") != "1":
    stop(f"no CUDA device: torch {torch.__version__} (built for CUDA {torch.version.cuda or 'none'}) sees no GPU, "
         "and bench/gpu.sh runs on a GPU machine only")
sys.path.insert(0, os.getcwd())
missing, broken = [], []
for name in ("triton", "metareward", "metareward.kernels.sample", "metareward.kernels.linear_logprobs",
             "metareward.kernels.paged_attention", "metareward.engine", "metareward.trainer.dpo", "bench.harness",
             "bench.bench_sample", "bench.bench_linear_logprobs", "bench.bench_paged_attention",
             "bench.engine_throughput", "bench.dpo_step"):
    try:
        __import__(name)
    except ModuleNotFoundError as e:
        missing.append(e.name)
    except Exception as e:
        broken.append(f"{name} ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})")
if missing:
    stop(f"missing Python packages: {', '.join(sorted(set(missing)))} (`pip install -e .` in this repository "
         "installs metareward's dependencies)")
if broken:
    stop(f"imports fail: {'; '.join(broken)}")
cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang") or shutil.which("cc")
if not cc:
    stop("no C compiler (gcc, clang or $CC): Triton compiles its kernel launcher with one")
header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
if not os.path.exists(header):
    stop(f"{header} is missing: Triton's launcher needs the Python headers (e.g. apt-get install python3-dev)")
import triton
import triton.language as tl

@triton.jit
def _twice(x, y, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + i, 2 * tl.load(x + i, mask=i < n), mask=i < n)

if torch.cuda.is_available():
    try:
        x = torch.arange(1000, device="cuda", dtype=torch.float32)
        y = torch.empty_like(x)
        _twice[(4,)](x, y, 1000, BLOCK=256)
        torch.cuda.synchronize()
        assert torch.equal(y, 2 * x), "wrong result"
    except Exception as e:
        lines = [ln for ln in traceback.format_exception_only(type(e), e)[-1].splitlines() if ln.strip()]
        stop(f"a trivial Triton kernel failed ({lines[0][:160] if lines else type(e).__name__})")
    dev = f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
else:
    dev = "no GPU (ALLOW_CPU=1: the Triton code runs under the interpreter; a test of this script)"
print(f"ok: python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton "
      f"{triton.__version__}, C compiler {cc}; device: {dev}")
for name in ("transformers", "flash_attn", "flashinfer", "liger_kernel", "vllm"):
    try:
        m = __import__(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as e:
        print(f"{name}: absent ({type(e).__name__})")
EOF
PREFLIGHT=$(timeout 120 python3 "$PRE_DIR/preflight.py" 2>/dev/null)
rc=$?
if [ "$rc" != 0 ]; then
  line=$(printf '%s\n' "$PREFLIGHT" | grep -m1 '^error:')
  [ -n "$line" ] || line="error: the preflight failed (exit $rc) without saying why; nothing was run"
  fail "$line"
fi

say "# bench/gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), out: $OUT_DIR"
say "$PREFLIGHT"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
fi
printf 'step\tlimit_s\texit\tseconds\n' >"$OUT_DIR/steps.tsv"

# step NAME LIMIT_S CMD: run CMD under min(LIMIT_S, time left); record a failure, never stop
step() {
  local name=$1 limit=$2 cmd=$3
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 10 ]; then
    say "== $name: SKIPPED, ${left}s of the ${BUDGET_S}s budget left"
    FAILED+=("$name (skipped: out of time)")
    printf '%s\t%s\tskipped\t0\n' "$name" "$limit" >>"$OUT_DIR/steps.tsv"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "== $name (limit ${limit}s, $((SECONDS - START))s elapsed): $cmd"
  local t0=$SECONDS rc
  # shellcheck disable=SC2086  # the command is a word list on purpose
  timeout --kill-after=5 "$limit" $cmd 2>&1 | tee "$OUT_DIR/$name.log" | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  say "== $name: exit $rc after $((SECONDS - t0))s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$rc" "$((SECONDS - t0))" >>"$OUT_DIR/steps.tsv"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    FAILED+=("$name (timed out after ${limit}s)")
  elif [ "$rc" != 0 ]; then
    FAILED+=("$name (exit $rc)")
  fi
}

for s in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$s"
  step "$name" "$limit" "$cmd"
done
if python3 -c "import vllm" >/dev/null 2>&1; then
  left=$((BUDGET_S - (SECONDS - START)))
  step vllm-peer "$left" "python3 bench/engine_throughput.py --vllm --reps 1 --out $OUT_DIR/vllm.json"
else
  say "== vllm-peer: not run (vllm is not installed)"
fi

say "# done in $((SECONDS - START))s"
if [ ${#FAILED[@]} -gt 0 ]; then
  say "FAILED: ${FAILED[*]}"
  exit 1
fi
say "all steps passed"
