#!/usr/bin/env bash
# Here, before a device call: put what gpu_check.sh needs from outside the repository into .device/, a folder
# git ignores (listed in the repository's .git/info/exclude by this script), so it travels when the call names
# it in carry (the device machine receives the working tree only; ../shared stays behind). 18.6 MB of the
# 64 MiB a call may carry.
#
#   bash benchmarks/prepare_device.sh [ARCHIVE]     # default ../shared/data/cifar10-jpeg.tar.xz
#   then: run(command="bash benchmarks/gpu_check.sh $OUT/check", carry=[".device"])
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/data/cifar10-jpeg.tar.xz}
if [ ! -s "$src" ]; then
  echo "prepare_device: no CIFAR-10 archive at $src (pass its path)" >&2
  exit 2
fi
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >> "$exclude"
mkdir -p .device
cp "$src" .device/cifar10-jpeg.tar.xz.tmp
if [ -f "$src.sha256" ]; then
  want=$(cut -d' ' -f1 < "$src.sha256")
  got=$(sha256sum .device/cifar10-jpeg.tar.xz.tmp | cut -d' ' -f1)
  if [ "$want" != "$got" ]; then
    rm -f .device/cifar10-jpeg.tar.xz.tmp
    echo "prepare_device: $src does not match $src.sha256" >&2
    exit 1
  fi
fi
mv .device/cifar10-jpeg.tar.xz.tmp .device/cifar10-jpeg.tar.xz
if [ -n "$(git status --porcelain --ignored=no -- .device)" ]; then
  echo "prepare_device: git does not ignore .device/ ($exclude)" >&2
  exit 1
fi
echo "prepared .device/ ($(du -sh .device | cut -f1)), ignored by git; name .device in the device call's carry"
