#!/usr/bin/env bash
# Usage: create_tpu_vm.sh [--dry_run] NAME ZONE ACCELERATOR_TYPE [VERSION] [GCLOUD_FLAGS...]
#
# Creates a Cloud TPU VM, e.g. `create_tpu_vm.sh de-v4 us-central2-b v4-32`.
# VERSION is the TPU software version (default tpu-ubuntu2204-base); extra
# flags go to gcloud (e.g. --spot, --project=P). DRY_RUN=1 or --dry_run
# prints the command instead of running it.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"

if [[ "${1:-}" == --dry_run ]]; then DRY_RUN=1; shift; fi
[[ $# -ge 3 ]] || usage
name=$1 zone=$2 accelerator=$3
shift 3
version=tpu-ubuntu2204-base
if [[ $# -gt 0 && "$1" != -* ]]; then version=$1; shift; fi

run gcloud compute tpus tpu-vm create "${name}" --zone="${zone}" \
  --accelerator-type="${accelerator}" --version="${version}" "$@"
