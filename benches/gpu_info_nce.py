"""One GPU pass for InfoNCE, sized for a short device lease (~8 min on an H100/H200):

    python benches/gpu_info_nce.py        # logs to $OUT (or /tmp/gpu_info_nce_logs) and stdout

1. tests/test_info_nce.py on the GPU (the CUDA-only bf16/fp16, 64k-memory tests included);
2. the benchmark table at N = M ∈ {4096, 16384, 65536}, D = 256, modes full (all providers, ours
   with two backward sweeps and with one) then fwd / bwd (eager and ours only: torch.compile's
   per-shape compilations cost minutes);
3. `--tune`: full-pass time of ours for a few tile shapes at 16k.
Each step has its own time limit so that one hang cannot eat the lease.
"""
from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.environ.get("OUT") or "/tmp/gpu_info_nce_logs"

STEPS = [
    ("tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_info_nce.py"], {}, 240),
    ("bench_full", [sys.executable, "benches/bench_info_nce.py"],
     {"VITO_BENCH_SIZES": "4096,16384,65536", "VITO_BENCH_DIMS": "256", "VITO_BENCH_MODES": "full"}, 240),
    ("bench_fwd_bwd", [sys.executable, "benches/bench_info_nce.py"],
     {"VITO_BENCH_SIZES": "16384,65536", "VITO_BENCH_DIMS": "256", "VITO_BENCH_MODES": "fwd,bwd",
      "VITO_BENCH_PROVIDERS": "eager,triton,triton_one_sweep"}, 120),
    ("tune", [sys.executable, "benches/bench_info_nce.py", "--tune"], {}, 120),
]


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    failed = 0
    for name, command, env, limit in STEPS:
        print(f"== {name}: {' '.join(command)} {env}", flush=True)
        try:
            run = subprocess.run(command, cwd=ROOT, env=dict(os.environ, **env), capture_output=True,
                                 text=True, timeout=limit)
            output, code = run.stdout + run.stderr, run.returncode
        except subprocess.TimeoutExpired as error:
            parts = [p.decode(errors="replace") if isinstance(p, bytes) else (p or "")
                     for p in (error.stdout, error.stderr)]
            output, code = "".join(parts) + f"\nTIMEOUT after {limit} s", 124
        with open(os.path.join(OUT, f"{name}.log"), "w") as log:
            log.write(output)
        print(output[-6000:], f"\n== {name}: exit {code}", flush=True)
        failed += code != 0
    return failed


if __name__ == "__main__":
    sys.exit(main())
