#!/usr/bin/env bash
# `make test` as a new user runs it: from a fresh clone of this repository's HEAD in a
# directory only its owner may enter (mode 0700, like root's home or `mktemp -d`).
# A full build and test run: slow, so not part of `make test` itself, whose
# netns-tests/harness.rs checks what such a directory changes for the tests (a test
# binary other users cannot execute). Usage: scripts/test-clone.sh [make target...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
home=$(mktemp -d -t apivip-clone.XXXXXX)
trap 'rm -rf "$home"' EXIT
chmod 700 "$home"
git clone --quiet "$root" "$home/apivip"
echo "test-clone: $home/apivip (mode $(stat -c %a "$home"))" >&2
cd "$home/apivip"
make "${@:-test}"
