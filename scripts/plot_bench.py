"""Cost of the attention layers alone against the number of points, from `pcea bench --json`.

Usage:
    pcea bench --only attention --points 256,512,1024,2048,4096 --json bench.json
    python scripts/plot_bench.py bench.json attention.png

Draws two panels, time per batch and extra memory, on log-log axes, one line per
attention kind; a slope of 1 is linear growth, a slope of 2 quadratic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="JSON written by pcea bench --json")
    parser.add_argument("out", help="PNG to write")
    args = parser.parse_args()
    try:
        with open(args.results) as handle:
            rows = json.load(handle)["attention"]
    except (OSError, ValueError, KeyError) as err:
        print(f"plot_bench: error: {args.results}: cannot read attention results ({err})", file=sys.stderr)
        return 1
    if not rows:
        print(f"plot_bench: error: {args.results}: no attention results (run with --only attention)",
              file=sys.stderr)
        return 1

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in dict.fromkeys(row["attention"] for row in rows):
        own = sorted((r for r in rows if r["attention"] == kind), key=lambda r: r["tokens"])
        tokens = [r["tokens"] for r in own]
        ax_time.plot(tokens, [r["ms"] for r in own], marker="o", label=kind)
        ax_mem.plot(tokens, [max(r["extra_mb"], 1e-1) for r in own], marker="o", label=kind)
    first = rows[0]
    for ax, label in ((ax_time, "ms per batch"), (ax_mem, "extra memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("points (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"4 attention blocks, inference, batch {first['batch_size']}, {first['dim']} channels")
    fig.tight_layout()
    tmp = f"{args.out}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
