#!/usr/bin/env bash
# Evaluate a trained ModelNet40 run: the single pass, and test-time voting beside it on request.
#
#   scripts/eval_modelnet40.sh [RUN_DIR] [DATA]     (defaults: runs/pcea_mn40, the h5 release)
#   VOTES=10 DEVICE=cuda scripts/eval_modelnet40.sh runs/pct_mn40
#
# VOTES defaults to 1 (no voting): measured on ModelNet40 (docs/modelnet40.md, "Test-time
# voting"), 10 scaled votes gave 88.73 % against the single pass's 89.04 %. With VOTES=K,
# `pcea eval --votes K` reports the single pass and the K-copy vote (random anisotropic
# scaling of each copy) side by side, labelled, in RUN_DIR/eval.json, per_class.csv and
# confusion.csv/.png (the single pass). Published ModelNet40 numbers often use voting and a
# test-selected epoch: compare like with like (the "selection" field of eval.json says how best.pt was chosen).
set -euo pipefail

RUN=${1:-runs/pcea_mn40}
DATA=${2:-${PCEA_DATA:-datasets}/modelnet40_ply_hdf5_2048}
VOTES=${VOTES:-1}
DEVICE=${DEVICE:-auto}
PCEA=${PCEA:-pcea}
command -v "$PCEA" >/dev/null || PCEA=.venv/bin/pcea

"$PCEA" eval "$RUN" --data "$DATA" --device "$DEVICE" --votes "$VOTES"
