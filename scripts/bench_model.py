"""Throughput and memory per preset at B=32, N=1024 on the current device: a thin wrapper over `pcea bench`.

Usage:
    python scripts/bench_model.py                 # pcea, pct, pct-sa and the plain PCT baseline
    python scripts/bench_model.py --device cuda   # any other `pcea bench` option passes through

Equivalent to ``pcea bench --only models --model pcea,pct,pct-sa --reference ...``; it goes
through ``python -m pcea`` so that the allocator configuration of ``pcea bench`` applies.
"""

from __future__ import annotations

import os
import sys

DEFAULTS = ["--only", "models", "--model", "pcea,pct,pct-sa", "--reference", "--batch-size", "32",
            "--points", "1024"]

if __name__ == "__main__":
    argv = [sys.executable, "-m", "pcea", "bench", *DEFAULTS, *sys.argv[1:]]  # later options win
    os.execv(sys.executable, argv)
