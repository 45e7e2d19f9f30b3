#!/usr/bin/env bash
# Installs what cordon and its tests need on Debian, idempotently: QEMU,
# busybox-static, cpio, vhost-device-vsock, and a passt new enough for
# cordon's egress gate (built from Debian trixie's source package into
# /usr/local/lib/cordon/bin, which cordon looks at first). Run as root (or
# with sudo).
set -euo pipefail

# Debian 12's passt (2023-03) never sends the guest a FIN when the guest
# half-closed first and loses frame sync on short reads; cordon refuses
# passt older than this (runner/src/vm/passt.rs, MIN_DATE).
PASST_MIN="0.0~git20250503"
PASST_PREFIX="/usr/local/lib/cordon"
DEBIAN_MIRROR="${CORDON_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

need_apt=()
# make, gcc, libc6-dev, xz-utils and patch build passt from source.
# mmdebstrap and erofs-utils build the Debian userland image (`cordon image build debian`).
for pkg in qemu-system-x86 busybox-static cpio make gcc libc6-dev xz-utils patch bubblewrap mmdebstrap erofs-utils; do
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

# The version compiled into a passt binary. Not `passt --version`: newer
# passt prints it buffered and leaves with _exit, so a pipe gets nothing.
passt_version() {
  tr '\0' '\n' <"$1" | grep -a -B1 -m1 '^Copyright Red Hat$' | head -n1
}

install_passt() {
  local src version files f
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/dl"
  echo "deb-src $DEBIAN_MIRROR trixie main" >"$work/sources.list"
  # A private sources list, list dir and cache: the system's apt
  # configuration and state stay as they are.
  local apt=(-q -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
  apt-get "${apt[@]}" update >/dev/null
  version="$(apt-cache "${apt[@]}" showsrc passt | awk '/^Version:/ {print $2; exit}')"
  if [ -z "$version" ] || ! dpkg --compare-versions "$version" ge "$PASST_MIN"; then
    echo "setup: Debian trixie offers passt '${version:-none}', older than $PASST_MIN" >&2
    return 1
  fi
  echo "setup: building passt $version from Debian trixie's source package" >&2
  # The .dsc is sometimes missing on the mirror (404) while the tarballs
  # arrive; apt checks each file it gets against the signed index, and the
  # tarballs are checked again below, so its failure alone is not fatal.
  (cd "$work/dl" && apt-get "${apt[@]}" source --download-only "passt=$version" >/dev/null 2>&1) || true
  # "Checksums-Sha256:" lines of the signed Sources entry: " HASH SIZE NAME".
  files="$(apt-cache "${apt[@]}" showsrc passt | awk -v want="$version" '
    /^Package:/ {ver=""} /^Version:/ {ver=$2}
    /^Checksums-Sha256:/ {on=1; next} /^[^ ]/ {on=0}
    on && ver == want && $3 ~ /\.tar\./ {print $1 "  " $3}')"
  if [ -z "$files" ]; then
    echo "setup: no tarballs listed for passt $version" >&2
    return 1
  fi
  (cd "$work/dl" && sha256sum --quiet -c - <<<"$files")
  src="$work/src"
  mkdir -p "$src"
  for f in "$work"/dl/passt_*.orig.tar.*; do tar -xf "$f" -C "$src" --strip-components=1; done
  for f in "$work"/dl/passt_*.debian.tar.*; do tar -xf "$f" -C "$src"; done
  if [ -f "$src/debian/patches/series" ]; then
    while read -r p _; do
      case "$p" in '' | '#'*) continue ;; esac
      patch -s -d "$src" -p1 <"$src/debian/patches/$p"
    done <"$src/debian/patches/series"
  fi
  local targets=(passt)
  [ "$(uname -m)" = x86_64 ] && targets+=(passt.avx2)
  make -s -C "$src" -j"$(nproc)" "${targets[@]}" VERSION="$version" >/dev/null
  mkdir -p "$PASST_PREFIX/bin"
  for f in "${targets[@]}"; do
    install -m 0755 "$src/$f" "$PASST_PREFIX/bin/.$f.new"
    mv -f "$PASST_PREFIX/bin/.$f.new" "$PASST_PREFIX/bin/$f"
  done
  echo "setup: installed $PASST_PREFIX/bin/passt ($(passt_version "$PASST_PREFIX/bin/passt"))" >&2
}

have="$([ -x "$PASST_PREFIX/bin/passt" ] && passt_version "$PASST_PREFIX/bin/passt" || true)"
if [ -z "$have" ] || ! dpkg --compare-versions "$have" ge "$PASST_MIN" 2>/dev/null; then
  install_passt
fi
