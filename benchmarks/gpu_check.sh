#!/bin/sh
# One-command GPU check: the train-step, sync-debug and inference benchmarks on CUDA at bart-base
# size, in under 8 minutes on one GPU once the packages are installed. Prints the GPU's name; per
# training batch size, ms/step, examples/s and peak GPU memory in bf16 (as the GPU recipes train,
# design §6), ours against the stock path (the authors' way: stock BART layers, eager attention);
# the host synchronisations of 3 training steps of ours (torch.cuda.set_sync_debug_mode); and the
# beam-4 real-time factor of captioning (seconds of compute per second of audio), with the one-clip
# latency against stock generate.
#
#   sh benchmarks/gpu_check.sh                  # run it (needs a CUDA device)
#   sh benchmarks/gpu_check.sh --install        # first install what is missing, torch untouched
#   sh benchmarks/gpu_check.sh --dry-run        # print the commands only (works anywhere)
#
# Options:
#   --python PY      interpreter (default: .venv/bin/python if present, else python3)
#   --install        pip install -r benchmarks/requirements-gpu.txt, torch held at its version
#   --budget SEC     wall-clock budget of the whole check (default: 480); a step that would not
#                    fit is skipped with a message
#   --batch LIST     training batches, comma-separated (default: 16,64; 16 is the base recipes'
#                    global batch)
#   --steps N        timed training steps per pipeline (default: 20, after 5 warm-up steps)
#   --clips N        10 s clips captioned by the inference benchmark (default: 32)
#   --dry-run        print the commands, run nothing
#   -h, --help       this text
# Exit status: 0 done, 2 bad arguments, 3 no CUDA device, 4 a benchmark failed or timed out,
# 5 a package is missing (one line each, with what to install).
set -u

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "gpu_check.sh: error: $2" >&2; exit "$1"; }
is_count() { case "$1" in ''|*[!0-9]*) return 1;; 0) return 1;; *) return 0;; esac; }

cd "$(dirname "$0")/.." || exit 2
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
BUDGET=480 BATCHES=16,64 STEPS=20 CLIPS=32 DRY=0 INSTALL=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0;;
        --dry-run) DRY=1;;
        --install) INSTALL=1;;
        --python|--budget|--batch|--steps|--clips)
            [ $# -ge 2 ] || { usage >&2; fail 2 "$1 needs a value"; }
            case "$1" in
                --python) PY=$2;;
                --budget) BUDGET=$2;;
                --batch) BATCHES=$2;;
                --steps) STEPS=$2;;
                --clips) CLIPS=$2;;
            esac
            shift;;
        *) usage >&2; fail 2 "unknown argument: $1";;
    esac
    shift
done
for pair in "budget $BUDGET" "steps $STEPS" "clips $CLIPS"; do
    set -- $pair
    is_count "$2" || fail 2 "--$1 must be a positive integer, got '$2'"
done
BATCHES=$(echo "$BATCHES" | tr ',' ' ')
for batch in $BATCHES; do
    is_count "$batch" || fail 2 "--batch must be positive integers separated by commas, got '$batch'"
done
[ -n "$BATCHES" ] || fail 2 "--batch needs at least one batch size"
FIRST_BATCH=${BATCHES%% *}

# Ours against the stock path, with the recipes' dropout (dropout 0 is in benchmarks/train_step.py's
# own default run).
train_command() {
    echo "$PY benchmarks/train_step.py --device cuda --size bart-base --precision bf16 --batch $1 --steps $2" \
        "--warmup $3 --dropout 0.1 --pipelines original,ours"
}
INFER="$PY benchmarks/inference.py --device cuda --clips $CLIPS --batch_size $CLIPS"
if [ "$DRY" = 1 ]; then
    for batch in $BATCHES; do train_command "$batch" "$STEPS" 5; done
    echo "ENCLAP_SYNC_LOG=FILE PYTHONPATH=SYNC_DEBUG_DIR $(train_command "$FIRST_BATCH" 3 0)"
    echo "$INFER"
    exit 0
fi

# ------------------------------------------------------------------ packages
if [ "$INSTALL" = 1 ]; then
    # torch held at the installed version: pip adds what is missing but never swaps the CUDA build.
    HOLD=$(mktemp "${TMPDIR:-/tmp}/gpu_check_hold.XXXXXX") || exit 5
    "$PY" -c 'import torch; print("torch==" + torch.__version__)' > "$HOLD" \
        || fail 5 "torch does not import with $PY (its error is above): install a CUDA build of torch first (https://pytorch.org/get-started/locally/)"
    "$PY" -m pip install -r benchmarks/requirements-gpu.txt -c "$HOLD" \
        || fail 5 "pip install -r benchmarks/requirements-gpu.txt failed (above)"
    rm -f "$HOLD"
fi
# One line per missing package, with the import's own error (a broken CUDA build says why).
PACKAGES=$("$PY" benchmarks/gpu_packages.py 2>&1) || {
    [ -n "$PACKAGES" ] && echo "$PACKAGES" >&2
    fail 5 "install what is missing (above), then rerun"
}

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' \
    || fail 3 "no CUDA device visible to torch ($PY, CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}); this check needs a GPU (--dry-run prints its commands)"
GPU=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))') || fail 3 "cannot read the GPU's name"
START=$(date +%s)
OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 4
trap 'rm -rf "$OUT"' EXIT

# run NAME COMMAND...: runs within what is left of the budget, output to $OUT/NAME.txt and the terminal.
run() {
    name=$1; shift
    left=$((BUDGET - ($(date +%s) - START)))
    [ "$left" -ge 30 ] || fail 4 "$name skipped: only ${left} s of the ${BUDGET} s budget left"
    echo "== $name (at most ${left} s): $*"
    timeout "$left" "$@" > "$OUT/$name.txt" 2>&1
    status=$?
    cat "$OUT/$name.txt"
    [ "$status" = 0 ] || fail 4 "$name failed (exit $status$([ "$status" = 124 ] && echo ', out of time'))"
}

echo "GPU: $GPU"
for batch in $BATCHES; do
    run "train_step_$batch" $(train_command "$batch" "$STEPS" 5)
done
# Every host synchronisation of 3 training steps, by source line: benchmarks/sync_debug/
# sitecustomize.py turns on torch's sync-debug mode in the benchmark's processes.
: > "$OUT/sync.log"
KEPT_PYTHONPATH=${PYTHONPATH-}
export ENCLAP_SYNC_LOG="$OUT/sync.log" PYTHONPATH="$(pwd)/benchmarks/sync_debug${PYTHONPATH:+:$PYTHONPATH}"
run sync_debug $(train_command "$FIRST_BATCH" 3 0)
unset ENCLAP_SYNC_LOG
PYTHONPATH=$KEPT_PYTHONPATH
run inference $INFER

# ------------------------------------------------------------------ summary
echo "== summary (GPU: $GPU; $(($(date +%s) - START)) s)"
for batch in $BATCHES; do
    grep -E '^dropout [0-9.]+ +(original|ours) +[0-9]' "$OUT/train_step_$batch.txt" | awk -v batch="$batch" '{
        for (i = 2; i <= NF; i++) if ($i ~ /s\/step\)$/) { ms = $(i - 1); sub(/^\(/, "", ms) }
        printf "train step, bart-base, bf16, batch %s x 750 frames, %-5s %8.1f ms/step, %s examples/s, peak GPU memory %s GiB\n",
               batch, ($3 == "original" ? "stock" : $3), ms * 1000, $4, $(NF - 4)}'
    grep '^speedup:' "$OUT/train_step_$batch.txt" | sed "s/^speedup: */train step, batch $batch: ours \/ stock examples per second x/"
done
COUNT=$(awk -F '\t' '$1 == "ours"' "$OUT/sync.log" | wc -l | tr -d ' ')
PLACES=$(awk -F '\t' '$1 == "ours" {print $2}' "$OUT/sync.log" | sort | uniq -c | sort -rn \
    | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')
echo "sync-debug, ours, 3 training steps at batch $FIRST_BATCH: $COUNT synchronizing CUDA call(s)${PLACES:+: $PLACES}"
ONE=$(sed -n 's/^ *one clip: stock \([0-9.]*\) s\/clip, .*ours \([0-9.]*\); stock\/ours \([0-9.]*\)x.*/\2 \1 \3/p' "$OUT/inference.txt")
PER_CLIP=$(sed -n 's/^ *batch of [0-9]*: .*ours \([0-9.]*\); .*/\1/p' "$OUT/inference.txt")
[ -n "$ONE" ] && [ -n "$PER_CLIP" ] || fail 4 "no 'one clip' / 'batch of' lines in the inference benchmark's output"
set -- $ONE
echo "inference, beam 4, one 10 s clip from features: ours $1 s, stock generate $2 s (x$3)"
awk -v s="$PER_CLIP" -v n="$CLIPS" 'BEGIN {printf "inference, beam 4, %d clips of 10 s in batches of %d: %.3f s per clip, real-time factor %.4f\n", n, n, s, s / 10}'
