# The machinery shared by the scripts that retrain a lineage of shipped weights
# (scripts/train_robust.sh, scripts/train_aligned.sh): segments of `pcea train`, each from the
# weights of one before it, uniform averages of their weights, and the robustness suite at the
# end. Sourced, not run. Every step is skipped when its result is there already and newer than
# its inputs, and a started segment continues from its last.pt (pcea train --resume), so a
# lineage script run again after any stop goes on where it stopped.
#
# A lineage script sets LINEAGE (its own name, for messages), then calls
#   lineage_setup DEFAULT_RUNS "SEGMENT NAMES" "DEFAULT EPOCHS"
# which reads the environment (DATA RUNS EPOCHS DEADLINE SUITE EXTRA PCEA PYTHON, each described in
# the lineage script), refuses bad settings with exit status 2 before anything runs, and leaves
# EPOCH_LIST (one number a segment) for the calls to `segment`; then `segment`, `average`, `suite`
# and `ship_hint` in the lineage's order.

lineage_fail() {
    echo "$LINEAGE: $*" >&2
    exit 2
}

lineage_setup() {
    local default_runs=$1 names=$2 default_epochs=$3
    DATA=${DATA:-${PCEA_DATA:-datasets}/modelnet40_ply_hdf5_2048}
    RUNS=${RUNS:-$default_runs}
    EPOCHS=${EPOCHS:-$default_epochs}
    DEADLINE=${DEADLINE:-}
    SUITE=${SUITE:-all}
    EXTRA=${EXTRA:-}
    PCEA=${PCEA:-pcea}
    command -v "$PCEA" >/dev/null || PCEA=.venv/bin/pcea
    if [ -z "${PYTHON:-}" ]; then  # the Python beside pcea, else the clone's .venv, else python3
        PYTHON=python3
        [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
        local pcea_at
        pcea_at=$(command -v "$PCEA" || true)
        if [ -n "$pcea_at" ] && [ -x "$(dirname "$pcea_at")/python" ]; then
            PYTHON=$(dirname "$pcea_at")/python
        fi
    fi

    local -a name_list
    read -r -a name_list <<< "$names"
    read -r -a EPOCH_LIST <<< "$EPOCHS"
    local n
    for n in "${EPOCH_LIST[@]}"; do
        case $n in *[!0-9]* | 0*) EPOCH_LIST=() ;; esac
    done
    if [ "${#EPOCH_LIST[@]}" -ne "${#name_list[@]}" ]; then
        lineage_fail "EPOCHS must be ${#name_list[@]} whole numbers >= 1 ($names), not '$EPOCHS'"
    fi
    case $DEADLINE in *[!0-9]*) lineage_fail "DEADLINE must be whole seconds, not '$DEADLINE'" ;; esac
    command -v "$PYTHON" >/dev/null ||
        lineage_fail "PYTHON '$PYTHON' is not a command (it runs scripts/average_weights.py)"
    LINEAGE_START=$SECONDS

    if [ "$DATA" != synthetic ] && [ ! -d "$DATA" ]; then
        "$PCEA" download modelnet40
    fi
    mkdir -p "$RUNS"
}

# a command with the time left before DEADLINE (SIGTERM: pcea train checkpoints and exits 143)
timed() {
    if [ -z "$DEADLINE" ]; then
        "$@"
        return
    fi
    local left=$((DEADLINE - (SECONDS - LINEAGE_START)))
    if [ "$left" -le 0 ]; then
        echo "$LINEAGE: DEADLINE reached; run again to continue" >&2
        exit 143
    fi
    timeout --signal=TERM --preserve-status "$left" "$@"
}

run_pcea() {
    timed "$PCEA" "$@"
}

# segment NAME CONFIG EPOCHS INIT [FLAG...]: train RUNS/NAME, or continue it, or skip it when done;
# before DEADLINE, pcea train stops itself between epochs (--max-time, status 75) and timed's
# SIGTERM is the backstop for an epoch that outlasts the estimate
segment() {
    local name=$1 config=$2 epochs=$3 init=$4
    shift 4
    local out=$RUNS/$name limit=()
    local left=$((${DEADLINE:-0} - (SECONDS - LINEAGE_START)))
    if [ -n "$DEADLINE" ] && [ "$left" -gt 0 ]; then limit=(--max-time "$left"); fi
    if [ -f "$out/config.yaml" ] || [ -f "$out/last.pt" ]; then  # started: continue it
        echo "== $name: continuing $out (pcea train --resume; nothing to do when it is complete)"
        # shellcheck disable=SC2086
        run_pcea train --resume "$out" ${limit[@]+"${limit[@]}"} $EXTRA
    else
        echo "== $name: $config, $epochs epochs, from ${init:-random weights}"
        local args=(train --config "$config" --data "$DATA" --out "$out" --epochs "$epochs")
        [ -n "$init" ] && args+=(--init "$init")
        # shellcheck disable=SC2086
        run_pcea "${args[@]}" "$@" ${limit[@]+"${limit[@]}"} $EXTRA
    fi
}

# average OUT MEMBER...: the uniform average of the members' weights, made again when one of them
# is newer than OUT (trained on since, or an earlier version's RUNS)
average() {
    local out=$1
    shift
    local member fresh=no
    if [ -f "$out" ]; then
        fresh=yes
        for member in "$@"; do
            if [ "$member" -nt "$out" ]; then fresh=no; fi
        done
    fi
    if [ "$fresh" = yes ]; then
        echo "== average: $out is there already, newer than its $# inputs"
    else
        echo "== average: $out, the uniform average of $*"
        timed "$PYTHON" scripts/average_weights.py "$out" "$@"
    fi
}

# suite CHECKPOINT: the corruptions in SUITE on the validation split, into RUNS/suite; measured
# again when the checkpoint is newer than the last measurement
suite() {
    local checkpoint=$1
    if [ -f "$RUNS/suite/robustness.json" ] && [ ! "$checkpoint" -nt "$RUNS/suite/robustness.json" ]; then
        echo "== suite: $RUNS/suite/robustness.json is there already"
    else
        echo "== suite: $SUITE on the validation split"
        run_pcea eval "$checkpoint" --data "$DATA" --split val --corrupt "$SUITE" --out "$RUNS/suite"
    fi
}

# ship_hint CHECKPOINT NAME RECIPE: the command that ships it (not run: shipping replaces the
# weights in git, a decision for a person); the card names the machine, as lscpu does
ship_hint() {
    local checkpoint=$1 name=$2 recipe=$3 cpu
    cpu=$( (lscpu 2>/dev/null || true) | awk -F': *' '/^Model name/ {m = $2} /^CPU family/ {f = $2}
                                               END {if (m != "") print m ", CPU family " f}')
    echo "== done. To ship (replaces the weights in git; compare with docs/modelnet40.md first):"
    echo "   .venv/bin/python scripts/ship_weights.py $checkpoint --name $name" \
         "--recipe $recipe --half --robustness $RUNS/suite/robustness.json" \
         "--cpu \"${cpu:-FILL IN: this machine, with the family lscpu names}\""
}
