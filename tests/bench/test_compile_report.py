# The offline sm_90 compile report (bench/compile_report.py) in CI: every Triton kernel compiles at its launchers'
# benchmark configurations, fits in the SM's shared memory, and no 16-bit configuration spills. It runs in a fresh
# process without TRITON_INTERPRET (the tests' conftest sets it; the report needs the real compiler).
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"kernel", "config", "dtype", "compiled", "error", "registers", "spill_bytes", "shared_bytes", "num_warps",
        "num_stages", "ctas_per_sm"}
SM90_SMEM_PER_BLOCK = 227 * 1024

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin").is_dir(),
                                reason="this triton has no NVIDIA backend (ptxas) to compile with")


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "METAREWARD_KERNELS")}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "report.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "compile_report.py"), "--target", "sm_90", "--json",
                        str(out), "--jobs", "2"], capture_output=True, text=True, env=clean_env(), timeout=1500)
    return r, json.loads(out.read_text()) if out.exists() else None


def test_report_runs_and_every_kernel_compiles(report):
    r, rows = report
    assert rows is not None, r.stderr[-3000:]
    assert r.returncode == 0, r.stderr[-3000:]
    assert rows and all(KEYS <= set(row) for row in rows)
    failed = [(row["kernel"], row["config"], row["dtype"], row["error"]) for row in rows if not row["compiled"]]
    assert not failed, failed
    assert "| _sample_kernel |" in r.stdout  # the table is printed too


def test_shared_memory_fits_sm90(report):
    _, rows = report
    over = [(row["kernel"], row["config"], row["shared_bytes"]) for row in rows
            if row["shared_bytes"] > SM90_SMEM_PER_BLOCK or row["ctas_per_sm"] < 1]
    assert not over, over


def test_no_spill_in_16_bit_configurations(report):
    _, rows = report
    spills = [(row["kernel"], row["config"], row["dtype"], row["spill_bytes"]) for row in rows
              if row["dtype"] in ("bf16", "fp16") and row["spill_bytes"]]
    assert not spills, spills


def test_every_op_and_shape_of_the_brief_is_covered(report):
    _, rows = report
    seen = {(row["config"]["op"], row["dtype"]) for row in rows}
    for op in ("sample", "linear_logprobs", "paged_attention_decode", "store_kv"):
        for dtype in ("bf16", "fp32"):
            assert (op, dtype) in seen, (op, dtype)
    decode = {(row["config"]["D"], row["config"]["group"], row["dtype"]) for row in rows
              if row["config"]["op"] == "paged_attention_decode"}
    assert {(d, g, t) for d in (64, 128, 256) for g in (1, 4, 8) for t in ("bf16", "fp16", "fp32")} <= decode
    assert {row["config"]["V"] for row in rows if row["config"]["op"] == "sample"} == {32000, 128256, 151936}


def test_an_unlaunched_kernel_is_found(tmp_path):
    # discovery: a kernel no configuration launches must show up; a helper it calls (or a reduce's combine
    # function) must not; a name in a comment does not count as a use
    pkg = tmp_path / "fakekernels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "op.py").write_text(textwrap.dedent("""
        import triton
        import triton.language as tl

        @triton.jit
        def _combine(a, b):
            return a + b

        @triton.jit
        def _helper(x):  # not _new_kernel
            return tl.reduce(x, 0, _combine)

        @triton.jit
        def _new_kernel(p):
            tl.store(p, _helper(tl.load(p + tl.arange(0, 16))))
        """))
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "import compile_report as C\nC.KERNEL_PACKAGE = 'fakekernels'\nprint(sorted(C.discover_kernels()))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(ROOT / "bench")], capture_output=True,
                       text=True, env=clean_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "['_new_kernel']"


def test_occupancy_arithmetic():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import compile_report as C
    finally:
        sys.path.remove(str(ROOT / "bench"))
    sm90 = C.TARGETS["sm_90"]
    assert C.ctas_per_sm(sm90, 255, 8, 98304) == 1  # 256 registers a thread x 256 threads: half the file
    assert C.ctas_per_sm(sm90, 128, 8, 0) == 2
    assert C.ctas_per_sm(sm90, 20, 4, 0) == 16  # 64 warps an SM
    assert C.ctas_per_sm(sm90, 32, 1, 0) == 32  # 32 CTAs an SM
    assert C.ctas_per_sm(sm90, 64, 4, 71680) == 3  # (70 KiB + 1 KiB reserved) x 3 <= 228 KiB
    ttgir = ("%k = ttg.local_alloc : () -> !ttg.memdesc<2x64x128xbf16, #shared, #smem, mutable> loc(#l)\n"
             "%q = ttg.local_alloc %x : (tensor<16x128xbf16>) -> !ttg.memdesc<16x128xbf16, #shared, #smem>\n")
    assert C.pipeline_buffers(ttgir) == 2 and C.pipeline_buffers("") == 0
