#!/usr/bin/env bash
# The whole recipe of the shipped `modelnet40` weights in one command, for a machine with a GPU
# (or a CPU and patience): the fourteen segments of docs/modelnet40.md's ledger behind it, one after
# the other, each starting from the weights of the one before (--init), then the uniform average
# ("model soup") of the last three, then the robustness suite of that average on the validation
# split. Run it again after any stop (SIGTERM, a time limit, a lost session): finished segments are
# skipped and a stopped one continues from its last.pt (pcea train --resume).
# A RUNS from an earlier version of this script (four to twelve segments) goes on too: the missing
# segments are trained from the last one there, and the average and the suite are made again.
#
#   scripts/train_robust.sh                              # the shipped lineage's epochs (EPOCHS below)
#   EPOCHS="100 10 40 80 36 36 30 26 14 20 18 20 18 20" EXTRA="--amp" \
#       scripts/train_robust.sh                          # more epochs, bf16 on a GPU
#   DEADLINE=540 scripts/train_robust.sh                 # stop cleanly after 540 s (run again to go on)
#
# Segments (configs/ holds each recipe; flags here override only data, start weights and epochs;
# the ledger numbers them 0 to 7, 9 to 12, 17 and 18: segments 8 and 13 to 16 were trials off the
# lineage):
#   aligned   configs/modelnet40_cpu.yaml       random start, PCT's augmentation (segment 0; the
#                                               recipe has averaged the weights and balanced the
#                                               classes since segment 0 was trained)
#   robust1   configs/modelnet40_robust.yaml    + any yaw about the up axis, 30 % of clouds occluded
#   robust2   configs/modelnet40_robust.yaml    the same again, lr 3e-4 over 10 epochs
#   wolfmix   configs/modelnet40_wolfmix.yaml   + PointWOLF and RSMix, an average of the weights
#   balanced  configs/modelnet40_wolfmix.yaml   the same again, 50 % of clouds occluded, class-balanced
#                                               draws (--occlusion 0.5 --balanced)
#   points1024 configs/modelnet40_wolfmix.yaml  as balanced, at PCT's input size: 1,024 points, centres
#                                               512/256 (--points 1024 --model-opt centers=[512,256])
#   noise     configs/modelnet40_wolfmix.yaml   as points1024, 30 % of clouds given stray points, clusters
#                                               of extra points or jitter (--noise 0.3)
#   occlusion70 configs/modelnet40_wolfmix.yaml as noise, 70 % of clouds occluded (half of them partial
#                                               views) (--occlusion 0.7)
#   halflr    configs/modelnet40_wolfmix.yaml   as occlusion70 at half its peak learning rate (--lr 0.0001;
#                                               segment 9, which ran on seed 1's stream: every --init
#                                               run now draws a stream of its own, docs/modelnet40.md)
#   tilt      configs/modelnet40_wolfmix.yaml   as halflr, every cloud leaned off the up axis by up to 25
#                                               degrees about each horizontal axis (--tilt 25)
#   tilt2     configs/modelnet40_wolfmix.yaml   tilt's recipe again from its last epoch (a warm restart)
#   tilt3     configs/modelnet40_wolfmix.yaml   tilt2's recipe from its last epoch at half the peak
#                                               learning rate (--lr 0.00005; segment 12)
#   occlusion80 configs/modelnet40_wolfmix.yaml as tilt3, 80 % of clouds occluded, at half its peak
#                                               learning rate (--occlusion 0.8 --lr 0.000025; segment 17)
#   occlusion80b configs/modelnet40_wolfmix.yaml occlusion80's recipe again from its last epoch at
#                                               1.5 times its peak (--lr 0.0000375; segment 18)
# then `$PYTHON scripts/average_weights.py RUNS/soup/soup.pt` of tilt3's, occlusion80's and
# occlusion80b's last.pt (each run's last epoch: the averaged weights at the end of its schedule),
# the uniform average that the shipped modelnet40 is; then `pcea eval RUNS/soup/soup.pt --split val
# --corrupt all --out RUNS/suite`, and the command that ships the average (not run here: shipping
# replaces the weights in git, a decision for a person).
# Not bit for bit the shipped weights: the shipped soup averaged segment 12's float16 file (the
# pcea/weights/modelnet40.pt that shipped before the soup), not tilt3's float32 last.pt, and
# segment 17 started from that float16 file (--init modelnet40; segment 12's run directory was not
# on that machine). This script uses its own run's float32 files throughout: the same recipe, not
# bit-identical weights.
#
# Environment (all optional):
#   DATA      ModelNet40 in any layout pcea reads (default: $PCEA_DATA or datasets/, downloaded if absent)
#   RUNS      where the segments' run directories, the average and the suite go (default: runs/robust)
#   EPOCHS    the fourteen segments' epochs, in order (default: "13 2 10 20 18 18 15 13 7 10 9 10 9 10",
#             the shipped lineage's)
#   DEADLINE  seconds from now by which the script stops, resumably: a segment is given the time
#             left as `pcea train --max-time` and stops between epochs before one that would end
#             past it (the script exits 75); whatever still runs at the deadline (a segment's first
#             epoch, the averaging) is sent SIGTERM, a segment keeping its last finished epoch in
#             last.pt (the script exits 143) (default: none)
#   SUITE     corruptions for the closing evaluation, comma-separated, or "all" (default: all)
#   EXTRA     more flags for every `pcea train`, e.g. "--amp --threads 8" on a GPU machine
#   PCEA      the pcea command (default: pcea on PATH, else .venv/bin/pcea)
#   PYTHON    the Python that runs scripts/average_weights.py (default: the python beside PCEA,
#             else .venv/bin/python, else python3)
# What the shipped weights' run measured, and on which CPU, is in docs/modelnet40.md; this script
# has been run whole on the CPU with tiny settings only, and the suite no longer runs it whole:
# tests/test_scripts.py checks its calls and their order with a stand-in pcea, reads each `pcea
# train` call with pcea's own command line, and trains train_aligned.sh (the same
# scripts/lineage.sh) end to end with tiny settings.
set -euo pipefail
LINEAGE=train_robust.sh
# shellcheck source=scripts/lineage.sh
source "$(dirname "$0")/lineage.sh"
lineage_setup runs/robust \
    "aligned robust1 robust2 wolfmix balanced points1024 noise occlusion70 halflr tilt tilt2 tilt3 occlusion80 occlusion80b" \
    "13 2 10 20 18 18 15 13 7 10 9 10 9 10"

segment aligned configs/modelnet40_cpu.yaml "${EPOCH_LIST[0]}" ""
segment robust1 configs/modelnet40_robust.yaml "${EPOCH_LIST[1]}" "$RUNS/aligned"
segment robust2 configs/modelnet40_robust.yaml "${EPOCH_LIST[2]}" "$RUNS/robust1" --lr 0.0003
segment wolfmix configs/modelnet40_wolfmix.yaml "${EPOCH_LIST[3]}" "$RUNS/robust2"
# segments 4 to 12, 17 and 18 started from the last epoch of the one before (a run directory names best.pt)
segment balanced configs/modelnet40_wolfmix.yaml "${EPOCH_LIST[4]}" "$RUNS/wolfmix/last.pt" --occlusion 0.5 --balanced
segment points1024 configs/modelnet40_wolfmix.yaml "${EPOCH_LIST[5]}" "$RUNS/balanced/last.pt" \
    --points 1024 --model-opt 'centers=[512,256]' --occlusion 0.5 --balanced
segment noise configs/modelnet40_wolfmix.yaml "${EPOCH_LIST[6]}" "$RUNS/points1024/last.pt" \
    --points 1024 --model-opt 'centers=[512,256]' --occlusion 0.5 --balanced --noise 0.3
segment occlusion70 configs/modelnet40_wolfmix.yaml "${EPOCH_LIST[7]}" "$RUNS/noise/last.pt" \
    --points 1024 --model-opt 'centers=[512,256]' --occlusion 0.7 --balanced --noise 0.3
segment halflr configs/modelnet40_wolfmix.yaml "${EPOCH_LIST[8]}" "$RUNS/occlusion70/last.pt" \
    --points 1024 --model-opt 'centers=[512,256]' --occlusion 0.7 --balanced --noise 0.3 --lr 0.0001
segment tilt configs/modelnet40_wolfmix.yaml "${EPOCH_LIST[9]}" "$RUNS/halflr/last.pt" \
    --points 1024 --model-opt 'centers=[512,256]' --occlusion 0.7 --balanced --noise 0.3 --lr 0.0001 --tilt 25
segment tilt2 configs/modelnet40_wolfmix.yaml "${EPOCH_LIST[10]}" "$RUNS/tilt/last.pt" \
    --points 1024 --model-opt 'centers=[512,256]' --occlusion 0.7 --balanced --noise 0.3 --lr 0.0001 --tilt 25
segment tilt3 configs/modelnet40_wolfmix.yaml "${EPOCH_LIST[11]}" "$RUNS/tilt2/last.pt" \
    --points 1024 --model-opt 'centers=[512,256]' --occlusion 0.7 --balanced --noise 0.3 --lr 0.00005 --tilt 25
segment occlusion80 configs/modelnet40_wolfmix.yaml "${EPOCH_LIST[12]}" "$RUNS/tilt3/last.pt" \
    --points 1024 --model-opt 'centers=[512,256]' --occlusion 0.8 --balanced --noise 0.3 \
    --lr 0.000025 --tilt 25
segment occlusion80b configs/modelnet40_wolfmix.yaml "${EPOCH_LIST[13]}" "$RUNS/occlusion80/last.pt" \
    --points 1024 --model-opt 'centers=[512,256]' --occlusion 0.8 --balanced --noise 0.3 \
    --lr 0.0000375 --tilt 25

SOUP=$RUNS/soup/soup.pt
average "$SOUP" "$RUNS/tilt3/last.pt" "$RUNS/occlusion80/last.pt" "$RUNS/occlusion80b/last.pt"
suite "$SOUP"
ship_hint "$SOUP" modelnet40 configs/modelnet40_wolfmix.yaml
