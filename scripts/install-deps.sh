#!/usr/bin/env bash
# Installs the Debian packages apivip's demo, tests and benches use, only those missing.
# Usage: scripts/install-deps.sh [demo|test|bench]   (default: test)
set -euo pipefail

want=${1:-test}
# command -> package
declare -A pkg=(
  [ip]=iproute2 [nft]=nftables [ping]=iputils-ping [tcpdump]=tcpdump [curl]=curl
)
case "$want" in
  demo) ;;
  test|bench)
    # runc starts the image the way a kubelet's runtime would (netns-tests/image.rs).
    pkg+=([keepalived]=keepalived [haproxy]=haproxy [nginx]=nginx [kubectl]=kubernetes-client
          [openssl]=openssl [buildah]=buildah [runc]=runc [systemd-analyze]=systemd
          [bird]=bird2)
    ;;&
  bench) pkg+=([wrk]=wrk [python3]=python3) ;;
  test) ;;
  *) echo "install-deps: unknown set '$want' (want demo, test or bench)" >&2; exit 2 ;;
esac

missing=()
for cmd in "${!pkg[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then
    missing+=("${pkg[$cmd]}")
  fi
done
# bench/forwarder's nginx stream proxy needs the dynamic stream module.
if [ "$want" = bench ] && [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  missing+=(libnginx-mod-stream)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "install-deps: missing packages ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
else SUDO=; fi

echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
# Debian starts nginx/haproxy/keepalived/bird services on install where an init system runs;
# policy-rc.d keeps them from grabbing ports on the host: tests start their own copies.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
