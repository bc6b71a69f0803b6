"""The one timing harness every benchmark shares (Liger-Kernel style): a benchmark defines, per provider,
a setup that returns a zero-argument callable; the harness times it (median, p20, p80 after warm-up),
measures its peak extra memory, and prints / writes the table with the device and command it ran on."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from metareward.utils import peak_memory as peak_memory_now
from metareward.utils import reset_peak_memory, rss_bytes


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by one call of fn beyond what was allocated before it (CUDA: the caching
    allocator's counters; CPU: the process's peak RSS, which also counts the allocator's slack)."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    base = rss_bytes()
    if base is None or not reset_peak_memory(device):
        return None
    fn()
    return peak_memory_now(device) - base


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int = 3, rep: int = 10,
            min_time: float = 0.0) -> dict:
    """Median and p20/p80 in milliseconds over `rep` timed calls after `warmup` calls (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    while len(times) < rep or sum(times) < min_time * 1e3:
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p20_ms": q[1], "p80_ms": q[7], "reps": len(times)}


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted), the memory ceiling."""
    n = nbytes // 4 if device.type == "cuda" else nbytes // 16
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    t = time_fn(lambda: b.copy_(a), device, warmup=3, rep=20)
    return 2 * a.numel() * 4 / (t["median_ms"] / 1e3)


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192) -> float:
    """Measured dense matmul rate in FLOP/s for `dtype`, the compute ceiling."""
    if device.type != "cuda":
        n, dtype = 1024, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device, warmup=3, rep=20)
    return 2 * n**3 / (t["median_ms"] / 1e3)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def report(title: str, device: torch.device, rows: list[dict], columns: list[str], out: str | None,
           extra: dict | None = None) -> dict:
    """Print a markdown table of `rows` (dicts) restricted to `columns`, and write everything as JSON."""
    result = {
        "title": title, "device": device_name(device), "command": " ".join([sys.executable] + sys.argv),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **(extra or {}), "rows": rows,
    }
    print(f"\n## {title}\ndevice: {result['device']}\ncommand: {result['command']}")
    for k, v in (extra or {}).items():
        print(f"{k}: {v}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result


def cli(doc: str, bench: Callable, check: Callable, reps: int) -> int:
    """The kernel benchmarks' command line: `--check` (the Triton kernel against its reference on this device,
    exit 1 on failure) or the benchmark (`--out` JSON, `--reps`). On a CPU the check runs the Triton code under
    TRITON_INTERPRET=1, which must be set before the kernel's module is imported (a script importing
    metareward at its top sets it there itself)."""
    import argparse
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--check", action="store_true", help="correctness of the Triton kernel(s); exit 1 on failure")
    args = ap.parse_args()
    device = torch.device(args.device)
    if not args.check:
        bench(device, args.out, args.reps)
        return 0
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
        print("CPU: checking the Triton code under TRITON_INTERPRET=1 on small shapes")
    os.environ["METAREWARD_KERNELS"] = "triton"
    ok = check(device)
    print("check passed" if ok else "check FAILED")
    return 0 if ok else 1


def capture_graph(fn: Callable[[], object]):
    """(graph, output) of fn captured in a CUDA graph, after two eager calls (compilation and autotuning
    happen outside the capture). The correctness checks replay it on new inputs."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
