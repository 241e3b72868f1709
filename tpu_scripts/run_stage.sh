#!/usr/bin/env bash
# Usage: run_stage.sh [--dry_run] NAME ZONE STAGE [STAGE_FLAGS...]
#
# Runs `data-efficient STAGE --distributed STAGE_FLAGS...` on every worker of
# TPU VM NAME at once (one JAX process per host; each reads its share of the
# corpus), e.g.
#   run_stage.sh de-v4 us-central2-b score --model=flan_t5_xl ...
# Paths in STAGE_FLAGS are the workers' (gs:// or a gcsfuse mount).
# DRY_RUN=1 or --dry_run prints the command instead of running it.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"

if [[ "${1:-}" == --dry_run ]]; then DRY_RUN=1; shift; fi
[[ $# -ge 3 ]] || usage
name=$1 zone=$2 stage=$3
shift 3

printf -v flags ' %q' "$@"
[[ $# -gt 0 ]] || flags=""
remote="cd ~/data_efficient && ~/venv/bin/data-efficient ${stage} --distributed${flags}"
run gcloud compute tpus tpu-vm ssh "${name}" --zone="${zone}" --worker=all \
  --command="${remote}"
