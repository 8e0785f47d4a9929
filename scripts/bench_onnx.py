#!/usr/bin/env python3
"""ONNX Runtime (CPU) against pcea's eager inference, side by side in one process.

    python scripts/bench_onnx.py [--checkpoint RUN_OR_PT] [--points 1024] [--batch-sizes 1,32]
                                 [--threads 2] [--repeats 10] [--json FILE]

Exports the model (the default pcea preset with random weights, or a checkpoint) with
pcea.export_onnx, then times, for each batch size, the same random clouds through
(a) the eager model as pcea.load_model returns it (pcea.fast.accelerate: compiled FPS and
kNN, folded BatchNorm, oneDNN Linear, chunked grouping) under torch.no_grad, and (b) an
ONNX Runtime CPU session on the exported file; both with the same number of intra-op
threads, their calls alternating. It reports clouds/s (the median of --repeats timed passes
after --warmup untimed ones), the export time, the file size and the session's start-up time, and the
largest logit difference as a check. Like ``pcea bench``, it restarts itself once with
pcea's allocator settings (pcea.runtime; PCEA_ALLOCATOR=system turns that off).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pcea
from pcea.runtime import allocator_env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _alternating_medians(runs, repeats: int, warmup: int) -> list[float]:
    """Median seconds of each call, the calls alternating (A, B, A, B) so both see the same machine."""
    for _ in range(warmup):
        for run in runs:
            run()
    times = [[] for _ in runs]
    for _ in range(repeats):
        for run, kept in zip(runs, times, strict=True):
            start = time.perf_counter()
            run()
            kept.append(time.perf_counter() - start)
    return [statistics.median(kept) for kept in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a checkpoint or run directory (default: random weights)")
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    import onnxruntime

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        model = pcea.load_model(args.checkpoint)
    else:
        model = pcea.accelerate(pcea.build_model("pcea", num_points=args.points)).eval()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.onnx"
        start = time.perf_counter()
        export = pcea.export_onnx(model, path, num_points=args.points, verify=False)
        export_seconds = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        start = time.perf_counter()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session_seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    rows = []
    for batch in (int(text) for text in args.batch_sizes.split(",")):
        points = rng.normal(size=(batch, args.points, 3))
        points /= np.linalg.norm(points, axis=-1, keepdims=True)  # on the unit sphere
        points = points.astype(np.float32)
        tensor = torch.from_numpy(points)
        with torch.no_grad():
            runs = [lambda tensor=tensor: model(tensor),
                    lambda points=points: session.run(["logits"], {"points": points})]
            eager, onnx = _alternating_medians(runs, args.repeats, args.warmup)
            expected = model(tensor).numpy()
        got = session.run(["logits"], {"points": points})[0]
        rows.append({"batch": batch, "eager_clouds_per_s": batch / eager, "onnx_clouds_per_s": batch / onnx,
                     "max_abs_logit_difference": float(np.abs(got - expected).max())})
    result = {
        "command": "python scripts/bench_onnx.py " + " ".join(sys.argv[1:]),
        "cpu": _cpu_model(), "threads": args.threads, "points": args.points,
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "opset": export.opset,
        "export_seconds": export_seconds, "onnx_bytes": export.size_bytes, "session_seconds": session_seconds,
        "allocator": os.environ.get("MALLOC_MMAP_THRESHOLD_", "system"), "rows": rows,
    }
    print(f"{result['command']}\n{result['cpu']}, {args.threads} threads, N={args.points}, torch "
          f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, opset {export.opset}")
    print(f"export {export_seconds:.1f} s, {export.size_bytes / 1e6:.1f} MB; ONNX Runtime session "
          f"start-up {session_seconds:.1f} s")
    print(f"{'batch':>5}  {'pcea eager':>12}  {'ONNX Runtime':>12}  {'ratio':>6}  max |logit diff|")
    for row in rows:
        eager, onnx = row["eager_clouds_per_s"], row["onnx_clouds_per_s"]
        print(f"{row['batch']:>5}  {eager:>8.1f} c/s  {onnx:>8.1f} c/s  {onnx / eager:>6.2f}  "
              f"{row['max_abs_logit_difference']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    env = allocator_env(os.environ, "bench", "cpu")
    if env is not None:  # the allocator pcea's own commands run with, for the eager side
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    raise SystemExit(main())
