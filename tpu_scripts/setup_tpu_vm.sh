#!/usr/bin/env bash
# Usage: setup_tpu_vm.sh [--dry_run] NAME ZONE
#
# On every worker of TPU VM NAME: copies this repository (its committed
# HEAD) to ~/data_efficient, makes a venv ~/venv, clones T5X to ~/t5x and
# installs it as its README says (pip install -e '.[tpu]'), then installs
# this package with `pip install '.[tpu]'` last, so its pins win.
# DRY_RUN=1 or --dry_run prints the commands instead of running them.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"

if [[ "${1:-}" == --dry_run ]]; then DRY_RUN=1; shift; fi
[[ $# -eq 2 ]] || usage
name=$1 zone=$2
archive=/tmp/data_efficient.tar.gz

remote='set -e; rm -rf ~/data_efficient; tar xzf ~/data_efficient.tar.gz -C ~'
remote+='; python3 -m venv ~/venv; . ~/venv/bin/activate'
remote+='; python3 -m pip install --upgrade pip'
remote+='; [ -d ~/t5x ] || git clone --branch=main https://github.com/google-research/t5x ~/t5x'
remote+="; (cd ~/t5x && python3 -m pip install -e '.[tpu]')"
remote+="; (cd ~/data_efficient && python3 -m pip install '.[tpu]')"

run git -C "$(dirname "$0")/.." archive --format=tar.gz \
  --prefix=data_efficient/ -o "${archive}" HEAD
run gcloud compute tpus tpu-vm scp "${archive}" "${name}:~/" \
  --zone="${zone}" --worker=all
run gcloud compute tpus tpu-vm ssh "${name}" --zone="${zone}" --worker=all \
  --command="${remote}"
