#!/usr/bin/env bash
# Installs what cordon and its tests need on Debian, idempotently: QEMU, passt,
# busybox-static, cpio and vhost-device-vsock. Run as root (or with sudo).
set -euo pipefail

need_apt=()
for pair in qemu-system-x86_64:qemu-system-x86 passt:passt busybox:busybox-static dpkg-deb:dpkg; do
  bin=${pair%%:*} pkg=${pair##*:}
  command -v "$bin" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# busybox-static specifically: a dynamic busybox is no use inside the guest.
[ -x /bin/busybox ] && ! file -L /bin/busybox 2>/dev/null | grep -q 'dynamically linked' || need_apt+=(busybox-static)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" file >/dev/null
fi

if ! command -v vhost-device-vsock >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/vhost-device-vsock" ]; then
  echo "setup: cargo install vhost-device-vsock (a few minutes, once)" >&2
  cargo install --locked --quiet vhost-device-vsock
fi
