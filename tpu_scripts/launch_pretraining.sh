#!/usr/bin/env bash
# Usage: launch_pretraining.sh [--dry_run] NAME ZONE SIZE SELECTION SELECTION_DIR MODEL_DIR TRAIN_STEPS [T5X_FLAGS...]
#
# Pre-trains T5 1.1 SIZE (small or large) with T5X on every worker of TPU VM
# NAME, on the task c4_SELECTION_span_corruption, which
# data_efficient.pretraining.seqio_tasks registers from DATA_EFFICIENT_SELECTIONS=
# SELECTION=SELECTION_DIR (a selection or a materialised directory, as the
# workers see it). Extra flags go to t5x/train.py (e.g. --gin.BATCH_SIZE=512).
# DRY_RUN=1 or --dry_run prints the command instead of running it.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"

if [[ "${1:-}" == --dry_run ]]; then DRY_RUN=1; shift; fi
[[ $# -ge 7 ]] || usage
name=$1 zone=$2 size=$3 selection=$4 selection_dir=$5 model_dir=$6 steps=$7
shift 7
case "${size}" in small | large) ;; *) usage ;; esac
if [[ ! "${selection}" =~ ^[A-Za-z0-9_]+$ ]]; then
  echo "SELECTION must be letters, digits and underscores: ${selection}" >&2
  exit 2
fi

printf -v flags ' %q' "$@"
[[ $# -gt 0 ]] || flags=""
remote="cd ~/t5x && DATA_EFFICIENT_SELECTIONS=${selection}=${selection_dir}"
remote+=" ~/venv/bin/python3 t5x/train.py"
remote+=" --gin_file=\$HOME/data_efficient/configs/t5x/pretrain_t5_1_1_${size}.gin"
remote+=" --gin.MIXTURE_OR_TASK_NAME=\\\"c4_${selection}_span_corruption\\\""
remote+=" --gin.MODEL_DIR=\\\"${model_dir}\\\""
remote+=" --gin.TRAIN_STEPS=${steps}"
remote+=" --gin.USE_CACHED_TASKS=False --alsologtostderr${flags}"
run gcloud compute tpus tpu-vm ssh "${name}" --zone="${zone}" --worker=all \
  --command="${remote}"
