#!/usr/bin/env bash
# Installs what cordon and its tests need on Debian, idempotently: QEMU, passt,
# busybox-static, cpio and vhost-device-vsock. Run as root (or with sudo).
set -euo pipefail

need_apt=()
for pkg in qemu-system-x86 passt busybox-static cpio; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v vhost-device-vsock >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/vhost-device-vsock" ]; then
  echo "setup: cargo install vhost-device-vsock (a few minutes, once)" >&2
  cargo install --locked --quiet vhost-device-vsock
fi
