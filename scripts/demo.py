"""The `make demo` job: the default pcea model trained, evaluated and used on pcea-shapes, on the CPU.

1. generate the synthetic pcea-shapes dataset once (``pcea.data.synth.ensure_synthetic``);
2. ``pcea train`` the default model (the ``pcea`` preset, default architecture) on the CPU,
   sized to take a few minutes on 2 cores: 10 epochs instead of 250, 512 points per
   cloud instead of 1024 (the first stage's 512 centres then cover every point), and for so
   short a schedule batch 16 instead of 32 (twice the steps); everything else is the
   default recipe (SGD lr 0.01 cosine-annealed to 1e-4, label smoothing 0.2, PCT's augmentation);
3. ``pcea eval`` the selected checkpoint (best on the validation split) on the test split,
   with and without test-time voting;
4. ``pcea classify`` a few of the generated ``.off`` meshes of the test split.

Each step runs the ``pcea`` command a user would type, in a subprocess. The exit status is
1 if the test OA of the single pass is below the 90 % target. Environment overrides:
``DEMO_EPOCHS``, ``DEMO_POINTS``, ``DEMO_BATCH``, ``DEMO_LR``, ``DEMO_OUT``, and
``DEMO_AMP=1`` to train and evaluate with ``--amp`` (bf16 autocast) where the CPU runs bf16
natively. The default is float32, the exact path, the same on every CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pcea.data.synth import ensure_synthetic

# float32 by default: since the fused BatchNorm and oneDNN matmuls, a float32 epoch takes
# about 21 s here, as fast as bf16 autocast's 23 s, and it is exact and the same on every CPU.
# DEMO_AMP=1 asks for --amp (pcea notes it and stays in float32 without native bf16).
AMP = os.environ.get("DEMO_AMP", "0") == "1"
EPOCHS = int(os.environ.get("DEMO_EPOCHS", "10"))
POINTS = int(os.environ.get("DEMO_POINTS", "512"))
BATCH = int(os.environ.get("DEMO_BATCH", "16"))
LR = os.environ.get("DEMO_LR", "0.01")
OUT = Path(os.environ.get("DEMO_OUT", "runs/demo"))
VOTES = 3
TARGET_OA = 0.90


def pcea(*args: str) -> None:
    command = [sys.executable, "-m", "pcea", *args]
    print("\n$ pcea " + " ".join(args), flush=True)
    # `python -m pcea` restarts itself with the fast allocator settings (pcea/runtime.py).
    subprocess.run(command, check=True)


def main() -> int:
    start = time.perf_counter()
    data = ensure_synthetic()
    print(f"pcea-shapes at {data} (ready after {time.perf_counter() - start:.0f} s)")

    pcea("train", "--data", str(data), "--out", str(OUT), "--force", "--model", "pcea",
         "--epochs", str(EPOCHS), "--points", str(POINTS), "--batch-size", str(BATCH), "--lr", LR,
         "--device", "cpu", *(["--amp"] if AMP else []))
    trained = time.perf_counter()
    pcea("eval", str(OUT), "--data", str(data), "--votes", str(VOTES), "--device", "cpu",
         *(["--amp"] if AMP else []))
    examples = [sorted((data / "mesh" / name / "test").glob("*.off"))[0]
                for name in sorted(p.name for p in (data / "mesh").iterdir() if p.is_dir())[:4]]
    pcea("classify", str(OUT), *map(str, examples), "--top-k", "3")
    total = time.perf_counter() - start

    report = json.loads((OUT / "eval.json").read_text())
    single = report["results"]["single_pass"]
    voted = report["results"].get("voted")
    print(f"\nrun directory     {OUT}/ (config.yaml, metrics.jsonl, last.pt, best.pt, results.json)")
    print(f"training curves   {OUT / 'curves.png'}")
    print(f"confusion matrix  {OUT / 'confusion.png'} (per class: {OUT / 'per_class.csv'})")
    print(f"test OA           {single['overall_accuracy']:.1%} single pass"
          + (f", {voted['overall_accuracy']:.1%} with {VOTES} votes" if voted else "")
          + f" ({report['selection']}, epoch {report['epoch']} of {EPOCHS}, {POINTS} points, "
          f"{report['precision']})")
    print(f"wall time         {total / 60:.1f} min in all, "
          f"{(trained - start) / 60:.1f} min to generate the data and train")
    if single["overall_accuracy"] < TARGET_OA:
        print(f"below the {TARGET_OA:.0%} target", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
