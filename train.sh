#!/bin/sh
# Train EnCLAP with whatever `accelerate config` set up (one GPU, several GPUs, several nodes);
# without one, one process per visible GPU (said in one line), or one process on a CPU machine.
#   sh train.sh [CFG.yaml] [key=value ...]      default CFG: cfg/tiny.yaml (CPU quick start)
# Rerunning the same command resumes from the newest complete checkpoint of its output_dir.
# Runs from any folder: relative paths (the recipe, overrides, the recipe's own paths) are taken
# from the folder you run it in; a recipe name such as cfg/tiny.yaml is also found in the
# repository (design §6, "Relative paths").
set -eu
REPO=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
CFG=cfg/tiny.yaml
case "${1:-}" in
  "" | *=*) ;;                       # no recipe given: keep the default, all args are overrides
  -h | --help) exec "$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)" \
                 "$REPO/train.py" --help ;;
  *) CFG=$1; shift ;;
esac
# The project virtual environment when there is one (make setup), else the python on PATH.
# The launcher runs as a module of that python, so no console-script shebang is involved.
PYTHON=python3
if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}"
export TOKENIZERS_PARALLELISM=false
# --quiet: a failing run shows its own one-line error, not the launcher's traceback on top.
# Without an `accelerate config` file, say what accelerate would assume anyway (one process),
# so it does not warn about every unset launcher option.
ACCELERATE_CFG="${HF_HOME:-$HOME/.cache/huggingface}/accelerate/default_config.yaml"
# A cluster job gives the launcher its machines in ENCLAP_LAUNCH_ARGS (e.g. --multi_gpu
# --num_machines 2 --machine_rank $SLURM_NODEID ...; docs/cluster.md); word-split on purpose.
if [ -n "${ENCLAP_LAUNCH_ARGS:-}" ]; then
  # shellcheck disable=SC2086
  exec "$PYTHON" -m accelerate.commands.launch --quiet $ENCLAP_LAUNCH_ARGS "$REPO/train.py" "$CFG" "$@"
fi
if [ -f "$ACCELERATE_CFG" ]; then
  exec "$PYTHON" -m accelerate.commands.launch --quiet "$REPO/train.py" "$CFG" "$@"
fi
# No config: one process per visible GPU (CUDA_VISIBLE_DEVICES when set, else nvidia-smi's list),
# as `accelerate config` would set up a one-machine multi-GPU run; one process on a CPU machine.
visible_gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    # CUDA stops at the first invalid entry (-1 hides every GPU).
    printf '%s\n' "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | awk '/^ *(-|$)/ {exit} {n++} END {print n + 0}'
  elif command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi -L 2> /dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}
GPUS=$(visible_gpus)
if [ "$GPUS" -gt 1 ]; then
  echo "train.sh: $GPUS GPUs visible and no accelerate config: running $GPUS processes, one per GPU;" \
    "CUDA_VISIBLE_DEVICES=0 runs one, \`accelerate config\` or ENCLAP_LAUNCH_ARGS another layout (docs/cluster.md)" >&2
  exec "$PYTHON" -m accelerate.commands.launch --quiet --multi_gpu --num_processes "$GPUS" --num_machines 1 \
    --mixed_precision no --dynamo_backend no "$REPO/train.py" "$CFG" "$@"
fi
exec "$PYTHON" -m accelerate.commands.launch --quiet --num_processes 1 --num_machines 1 --mixed_precision no \
  --dynamo_backend no "$REPO/train.py" "$CFG" "$@"
