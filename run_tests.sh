#!/usr/bin/env bash
# README command 2: install what the tests need, then run the whole suite, offline.
#   ./run_tests.sh                 # everything
#   ./run_tests.sh -k config -x    # any pytest arguments
# As root it installs the Debian packages the system tests use; without root it lists the missing
# ones and those tests skip with that reason, except under CI=true, where a skip is a failure.
set -euo pipefail
cd "$(dirname "$0")"
DEBIAN_PACKAGES="dataset-fashion-mnist slurm-wlm munge iproute2"
missing=()
for p in $DEBIAN_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "not root: missing Debian packages ${missing[*]}; the tests that need them will skip (run as root to install)"
  fi
fi
python -m pip install -q -e ".[dev]"
# Lint and format first: a violation fails the run before the (long) suite starts.
python -m ruff check .
python -m ruff format --check .
export WANDB_MODE=offline WANDB_SILENT=true OMP_WAIT_POLICY=PASSIVE
exec python -m pytest "$@"
