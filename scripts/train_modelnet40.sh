#!/usr/bin/env bash
# The paper recipe on ModelNet40, on a GPU: the external-attention model (pcea) and PCT's
# offset-attention model (pct) trained the same way, for a side-by-side comparison.
#
#   scripts/train_modelnet40.sh                 # both runs, one after the other
#   MODELS=pcea SEEDS=0,1,2 scripts/train_modelnet40.sh   # one model, three seeds (mean ± std)
#   NPROC=4 scripts/train_modelnet40.sh         # DistributedDataParallel on 4 GPUs (torchrun)
#
# Recipe (configs/pct_modelnet40.yaml, PCT's): 1024 points, batch 32, 250 epochs, SGD
# momentum 0.9, weight decay 5e-4, lr 0.01 cosine-annealed to 1e-4, label smoothing 0.2,
# anisotropic scale + translation and shuffling. bf16 autocast (--amp). best.pt is chosen
# on a 10% validation split held out from the training set, and test is evaluated once
# at the end; results.json labels each figure ("last epoch", "best on val").
#
# References, from the papers, NOT results of this script:
#   PCT (Guo et al. 2020, arXiv 2012.09688) reports 93.2% overall accuracy on ModelNet40.
#   EANet (Guo et al. 2021, arXiv 2105.02358) reports that external attention matches or
#   beats self-attention at a far lower cost.
# Published numbers pick the best epoch on the test set (and often use voting and a best
# of several runs); to compare like with like, add EXTRA="--select-on test --val-split 0"
# (train on the whole training set, pick the epoch on test) and see
# scripts/eval_modelnet40.sh for voting.
set -euo pipefail

DATA=${DATA:-${PCEA_DATA:-datasets}/modelnet40_ply_hdf5_2048}
MODELS=${MODELS:-"pcea pct"}
SEEDS=${SEEDS:-}
NPROC=${NPROC:-1}
WORKERS=${WORKERS:-8}
EXTRA=${EXTRA:-}            # more flags for pcea train, e.g. EXTRA="--compile"
PCEA=${PCEA:-pcea}
command -v "$PCEA" >/dev/null || PCEA=.venv/bin/pcea

if [ ! -d "$DATA" ]; then
    "$PCEA" download modelnet40
fi

for MODEL in $MODELS; do
    OUT=runs/${MODEL}_mn40
    ARGS=(train --data "$DATA" --out "$OUT" --model "$MODEL" --amp --workers "$WORKERS")
    [ -n "$SEEDS" ] && ARGS+=(--seeds "$SEEDS")
    if [ -f "$OUT/last.pt" ] && [ -z "$SEEDS" ]; then
        ARGS=(train --resume "$OUT")    # an interrupted run continues where it stopped
    fi
    # shellcheck disable=SC2086
    if [ "$NPROC" -gt 1 ]; then
        PYTHON=$(dirname "$(command -v "$PCEA")")/python
        "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m pcea "${ARGS[@]}" $EXTRA
    else
        "$PCEA" "${ARGS[@]}" $EXTRA
    fi
done

for MODEL in $MODELS; do
    if [ -z "$SEEDS" ]; then
        echo "== $MODEL: runs/${MODEL}_mn40/results.json"
        cat "runs/${MODEL}_mn40/results.json"
    else
        echo "== $MODEL: runs/${MODEL}_mn40/seeds.json"
        cat "runs/${MODEL}_mn40/seeds.json"
    fi
done
