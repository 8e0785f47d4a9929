"""Clouds/s of bare training steps and eval passes of one preset (the figures of docs/benchmarks.md,
'A ModelNet40 training epoch on 2 cores'):

    python scripts/step_speed.py POINTS BATCH [MODEL] ["{'centers': [256, 128]}"]

Random clouds, SGD, 3 untimed steps then 10 timed ones, 2 torch threads, pcea's CPU kernels
applied with pcea.accelerate. Set MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
MALLOC_TOP_PAD_=1073741824 GOMP_SPINCOUNT=10000 for pcea's runtime configuration (the CLI sets them).
"""

import ast
import sys
import time

import torch

import pcea


def main() -> None:
    torch.set_num_threads(2)
    num_points, batch = int(sys.argv[1]), int(sys.argv[2])
    name = sys.argv[3] if len(sys.argv) > 3 else "pcea"
    options = ast.literal_eval(sys.argv[4]) if len(sys.argv) > 4 else {}
    model = pcea.accelerate(pcea.build_model(name, num_classes=40, num_points=num_points, **options))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    points, labels = torch.rand(batch, num_points, 3), torch.randint(0, 40, (batch,))
    model.train()
    for i in range(13):
        if i == 3:
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(points), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"{name} N={num_points} B={batch} {options}: {batch * 10 / (time.perf_counter() - t0):.1f} "
          "clouds/s training")
    model.eval()
    with torch.no_grad():
        for i in range(8):
            if i == 3:
                t0 = time.perf_counter()
            model(points)
    print(f"  {batch * 5 / (time.perf_counter() - t0):.1f} clouds/s inference")


if __name__ == "__main__":
    main()
