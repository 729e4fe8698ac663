#!/bin/sh
# One-command GPU check: the train-step and inference benchmarks on CUDA at bart-base size, in
# under 8 minutes on one GPU. Prints the GPU's name, training examples/s and peak GPU memory
# (ours and the authors' way, bf16 as the GPU recipes train, design §6), and the beam-4
# real-time factor of captioning (seconds of compute per second of audio), with the one-clip
# latency against stock generate.
#
#   sh benchmarks/gpu_check.sh                  # run it (needs a CUDA device)
#   sh benchmarks/gpu_check.sh --dry-run        # print the commands only (works anywhere)
#
# Options:
#   --python PY      interpreter (default: .venv/bin/python if present, else python3)
#   --budget SEC     wall-clock budget of the whole check (default: 480); a step that would not
#                    fit is skipped with a message
#   --batch N        training batch (default: 16, the base recipes' global batch)
#   --steps N        timed training steps per pipeline (default: 20, after 5 warm-up steps)
#   --clips N        10 s clips captioned by the inference benchmark (default: 32)
#   --dry-run        print the commands, run nothing
#   -h, --help       this text
# Exit status: 0 done, 2 bad arguments, 3 no CUDA device, 4 a benchmark failed or timed out.
set -u

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "gpu_check.sh: error: $2" >&2; exit "$1"; }
is_count() { case "$1" in ''|*[!0-9]*) return 1;; 0) return 1;; *) return 0;; esac; }

cd "$(dirname "$0")/.." || exit 2
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
BUDGET=480 BATCH=16 STEPS=20 CLIPS=32 DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0;;
        --dry-run) DRY=1;;
        --python|--budget|--batch|--steps|--clips)
            [ $# -ge 2 ] || { usage >&2; fail 2 "$1 needs a value"; }
            case "$1" in
                --python) PY=$2;;
                --budget) BUDGET=$2;;
                --batch) BATCH=$2;;
                --steps) STEPS=$2;;
                --clips) CLIPS=$2;;
            esac
            shift;;
        *) usage >&2; fail 2 "unknown argument: $1";;
    esac
    shift
done
for pair in "budget $BUDGET" "batch $BATCH" "steps $STEPS" "clips $CLIPS"; do
    set -- $pair
    is_count "$2" || fail 2 "--$1 must be a positive integer, got '$2'"
done

TRAIN="$PY benchmarks/train_step.py --device cuda --size bart-base --precision bf16 --batch $BATCH --steps $STEPS --warmup 5"
INFER="$PY benchmarks/inference.py --device cuda --clips $CLIPS --batch_size $CLIPS"
if [ "$DRY" = 1 ]; then
    echo "$TRAIN"
    echo "$INFER"
    exit 0
fi

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null \
    || fail 3 "no CUDA device visible to torch ($PY); this check needs a GPU (--dry-run prints its commands)"
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
run train_step $TRAIN
run inference $INFER

# ------------------------------------------------------------------ summary
echo "== summary (GPU: $GPU; $(($(date +%s) - START)) s)"
grep -E '^dropout [0-9.]+ +(original|sdpa|ours) +[0-9]' "$OUT/train_step.txt" \
    | awk -v batch="$BATCH" '{printf "train step, bart-base, bf16, batch %s x 750 frames, dropout %s, %-8s %s examples/s, peak GPU memory %s GiB\n", batch, $2, $3, $4, $(NF-4)}'
grep '^speedup:' "$OUT/train_step.txt" | sed 's/^/train step (dropout 0.1) /'
ONE=$(sed -n 's/^ *one clip: stock \([0-9.]*\) s\/clip, .*ours \([0-9.]*\); stock\/ours \([0-9.]*\)x.*/\2 \1 \3/p' "$OUT/inference.txt")
PER_CLIP=$(sed -n 's/^ *batch of [0-9]*: .*ours \([0-9.]*\); .*/\1/p' "$OUT/inference.txt")
[ -n "$ONE" ] && [ -n "$PER_CLIP" ] || fail 4 "no 'one clip' / 'batch of' lines in the inference benchmark's output"
set -- $ONE
echo "inference, beam 4, one 10 s clip from features: ours $1 s, stock generate $2 s (x$3)"
awk -v s="$PER_CLIP" -v n="$CLIPS" 'BEGIN {printf "inference, beam 4, %d clips of 10 s in batches of %d: %.3f s per clip, real-time factor %.4f\n", n, n, s, s / 10}'
