#!/usr/bin/env bash
# Builds the apivip image from deploy/Containerfile with buildah or podman.
# Usage: deploy/build-image.sh [TAG]
#   PROFILE=release|dev (default release)   BUILDER=buildah|podman (default: whichever is installed)
# The binary is linked statically: musl when that target is installed, otherwise glibc
# with crt-static (apivip resolves no host names at run time, so glibc's static NSS
# limits do not matter).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)
tag=${1:-ghcr.io/apivip/apivip:$version}
profile=${PROFILE:-release}
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  target=x86_64-unknown-linux-musl
else
  target=x86_64-unknown-linux-gnu
fi
builder=${BUILDER:-}
if [ -z "$builder" ]; then
  if command -v buildah >/dev/null 2>&1; then builder=buildah
  elif command -v podman >/dev/null 2>&1; then builder=podman
  else echo "build-image: neither buildah nor podman is installed (scripts/install-deps.sh test installs buildah)" >&2; exit 1
  fi
fi

# A separate target dir: RUSTFLAGS differ from the normal build's, which would otherwise
# be rebuilt from scratch on every switch.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C strip=debuginfo" \
  cargo build --manifest-path "$root/Cargo.toml" --locked --profile "$profile" \
  --target "$target" --target-dir "$root/target/static" --bin apivip
case "$profile" in dev) outdir=debug ;; *) outdir=$profile ;; esac
bin="$root/target/static/$target/$outdir/apivip"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/apivip"
case "$builder" in
  buildah) buildah bud --quiet -f "$root/deploy/Containerfile" -t "$tag" "$ctx" >/dev/null ;;
  podman) podman build --quiet -f "$root/deploy/Containerfile" -t "$tag" "$ctx" >/dev/null ;;
  *) echo "build-image: BUILDER must be buildah or podman, not '$builder'" >&2; exit 2 ;;
esac
echo "$tag"
