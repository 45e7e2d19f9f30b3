#!/usr/bin/env bash
# Builds cordon's minimal microVM kernel from Debian's linux-source package:
# `make tinyconfig` + kernel-config/ARCH.config, reproducibly, cached by the
# sha256 of (ARCH, fragment, source package version, this script).
#
# usage: build.sh [--no-cache] [--config-only] ARCH [OUTDIR]
#   ARCH           x86_64 (bzImage) | aarch64 (Image)
#   OUTDIR         the kernel build (object) directory, kept afterwards;
#                  default: a temporary directory removed on exit
#   --no-cache     build even when the cache holds this kernel, then replace it
#   --config-only  stop after writing and checking OUTDIR/.config (no cache)
#
# The last stdout line is the kernel's path in the cache; everything else
# (make's output, progress) goes to stderr. The cache entry is
#   ${XDG_CACHE_HOME:-$HOME/.cache}/cordon/cordon-kernels/<hash>/
#     bzImage | Image   the kernel to pass to QEMU's -kernel
#     vmlinux           x86_64 only: the ELF with the PVH note, for VMMs that
#                       boot it directly (Firecracker, Cloud Hypervisor)
#     config            the final .config
#     complete          written last; the entry is renamed into place whole
# Needs root (or passwordless sudo) only to apt-get install what is missing.
set -euo pipefail

readonly SRC_PKG=linux-source-6.1
readonly SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
# Fixed identity of the build: uname -r is <version>-cordon, uname -v shows
# these instead of the builder's user, host, build count and clock.
readonly LOCALVERSION_FIXED=-cordon
readonly BUILD_USER=cordon
readonly BUILD_HOST=cordon
readonly BUILD_VERSION=1

prog=${0##*/}
die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 1
}
log() { printf '%s: %s\n' "$prog" "$*" >&2; }
usage() {
	sed -n 's/^# \{0,1\}//; 6,11p' "$0" >&2
	exit 2
}

no_cache=0
config_only=0
args=()
while (($#)); do
	case $1 in
	--no-cache) no_cache=1 ;;
	--config-only) config_only=1 ;;
	-h | --help) usage ;;
	--) shift; args+=("$@"); break ;;
	-*) die "unknown option $1" ;;
	*) args+=("$1") ;;
	esac
	shift
done
((${#args[@]} >= 1 && ${#args[@]} <= 2)) || usage
arch=${args[0]}
outdir=${args[1]:-}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/${BASH_SOURCE[0]##*/}"
fragment="$here/$arch.config"
host_arch=$(uname -m)

case $arch in
x86_64)
	karch=x86_64 target=bzImage image=arch/x86/boot/bzImage gnu=x86_64-linux-gnu ;;
aarch64)
	karch=arm64 target=Image image=arch/arm64/boot/Image gnu=aarch64-linux-gnu ;;
*) die "unknown ARCH '$arch' (x86_64 or aarch64)" ;;
esac
[[ -f $fragment ]] || die "no fragment $fragment"
cross=
[[ $host_arch == "$arch" ]] || cross="$gnu-"

# --- the fragment: every option line has a line of why above it ----------

# Option lines: CONFIG_X=VALUE, or "# CONFIG_X is not set".
is_option() { [[ $1 =~ ^CONFIG_[A-Za-z0-9_]+= || $1 =~ ^#\ CONFIG_[A-Za-z0-9_]+\ is\ not\ set$ ]]; }

lint_fragment() {
	local prev= line n=0 bad=0
	while IFS= read -r line || [[ -n $line ]]; do
		n=$((n + 1))
		if is_option "$line"; then
			if ! [[ $prev == \#* ]] || is_option "$prev"; then
				printf '%s: %s:%d: option without a comment line above it: %s\n' \
					"$prog" "$fragment" "$n" "$line" >&2
				bad=1
			fi
		elif [[ -n $line && $line != \#* ]]; then
			printf '%s: %s:%d: not an option or a comment: %s\n' "$prog" "$fragment" "$n" "$line" >&2
			bad=1
		fi
		prev=$line
	done <"$fragment"
	((bad == 0)) || die "fragment $fragment is malformed"
}
lint_fragment

# --- prerequisites (Debian packages) --------------------------------------

apt_install() {
	log "installing missing packages: $*"
	local sudo=()
	if ((EUID != 0)); then
		command -v sudo >/dev/null && sudo -n true 2>/dev/null ||
			die "missing packages (install them as root): $*"
		sudo=(sudo -n)
	fi
	# The package lists may be stale: refresh them once and retry.
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "$@" >&2 ||
		{ "${sudo[@]}" apt-get update >&2 &&
			DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "$@" >&2; } ||
		die "apt-get install $* failed"
}

pkg_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

pkg_installed "$SRC_PKG" || apt_install "$SRC_PKG"
[[ -f $SRC_TARBALL ]] || die "$SRC_PKG is installed but $SRC_TARBALL is missing"
src_version=$(dpkg-query -W -f='${Version}' "$SRC_PKG")

# --- cache lookup ----------------------------------------------------------

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/cordon/cordon-kernels"
hash=$({
	printf 'arch %s\n' "$arch"
	printf 'fragment\n'
	cat "$fragment"
	printf 'source %s %s\n' "$SRC_PKG" "$src_version"
	printf 'build.sh\n'
	cat "$self"
} | sha256sum | cut -d' ' -f1)
entry="$cache_root/$hash"
kernel_name=${image##*/}

if ((!no_cache && !config_only)) && [[ -f $entry/complete ]]; then
	printf '%s\n' "$entry/$kernel_name"
	exit 0
fi

need=()
for tool in make:make gcc:gcc flex:flex bison:bison bc:bc perl:perl xz:xz-utils \
	tar:tar flock:util-linux; do
	command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
# objtool (x86) needs libelf's headers.
[[ $arch != x86_64 || -f /usr/include/gelf.h ]] || need+=(libelf-dev)
# The host compressor named by the fragment's CONFIG_KERNEL_<ALGO>.
if grep -q '^CONFIG_KERNEL_LZ4=y' "$fragment"; then command -v lz4 >/dev/null || need+=(lz4); fi
if grep -q '^CONFIG_KERNEL_ZSTD=y' "$fragment"; then command -v zstd >/dev/null || need+=(zstd); fi
if [[ -n $cross ]]; then
	command -v "${cross}gcc" >/dev/null || need+=("gcc-$gnu")
fi
((${#need[@]} == 0)) || apt_install "${need[@]}"

mkdir -p "$cache_root"

# One builder per entry; a second waits and then finds the entry complete.
if ((!config_only)); then
	exec 9>"$cache_root/$hash.lock"
	flock 9
	if ((!no_cache)) && [[ -f $entry/complete ]]; then
		printf '%s\n' "$entry/$kernel_name"
		exit 0
	fi
fi

# --- the source tree: extracted once per package version, never written ----

src_dir="$cache_root/src/$SRC_PKG-$src_version"
srctree="$src_dir/$SRC_PKG"
(
	exec 8>"$cache_root/src.lock"
	flock 8
	if [[ ! -f $src_dir/complete ]]; then
		log "extracting $SRC_TARBALL ($src_version)"
		rm -rf "$src_dir"
		mkdir -p "$cache_root/src"
		tmp=$(mktemp -d "$cache_root/src/.tmp.XXXXXX")
		tar -xJf "$SRC_TARBALL" -C "$tmp"
		[[ -f $tmp/$SRC_PKG/Makefile ]] || die "$SRC_TARBALL has no $SRC_PKG/Makefile"
		touch "$tmp/complete"
		mv -T "$tmp" "$src_dir"
	fi
)
# Out-of-tree builds (O=) need a pristine source tree.
[[ ! -e $srctree/.config && ! -e $srctree/include/config ]] ||
	die "$srctree is not pristine (remove $src_dir to re-extract)"

# --- the build ---------------------------------------------------------------

cleanup=()
on_exit() {
	local p
	for p in "${cleanup[@]}"; do rm -rf -- "$p"; done
}
trap on_exit EXIT

if [[ -z $outdir ]]; then
	outdir=$(mktemp -d "$cache_root/.build-$arch.XXXXXX")
	cleanup+=("$outdir")
else
	mkdir -p "$outdir"
	outdir=$(cd "$outdir" && pwd)
fi

# Reproducibility: the same inputs give the same bytes whoever builds, when
# and where. No variable of the caller's environment reaches make.
unset MAKEFLAGS MFLAGS MAKELEVEL KCFLAGS KCPPFLAGS KAFLAGS KRUSTFLAGS KBUILD_OUTPUT \
	KBUILD_EXTMOD KCONFIG_CONFIG KCONFIG_ALLCONFIG KBUILD_DEFCONFIG INSTALL_PATH \
	ARCH CROSS_COMPILE CC LD LLVM SOURCE_DATE_EPOCH GIT_DIR GIT_WORK_TREE
export LC_ALL=C TZ=UTC
# The source package's own date (tar keeps mtimes): fixed per version.
KBUILD_BUILD_TIMESTAMP=$(date -u -d "@$(stat -c %Y "$srctree/Makefile")")
export KBUILD_BUILD_TIMESTAMP
export KBUILD_BUILD_USER=$BUILD_USER KBUILD_BUILD_HOST=$BUILD_HOST KBUILD_BUILD_VERSION=$BUILD_VERSION
# setlocalversion must never ask git: the tarball has no .git, and a .git
# above the cache (a dotfiles repo in $HOME) must not count either.
export GIT_CEILING_DIRECTORIES=$src_dir

kmake() {
	nice -n 19 make -C "$srctree" O="$outdir" ARCH="$karch" CROSS_COMPILE="$cross" \
		LOCALVERSION="$LOCALVERSION_FIXED" -j2 "$@" >&2
}

log "configuring $arch in $outdir"
rm -f "$outdir/.config"
kmake tinyconfig
"$srctree/scripts/kconfig/merge_config.sh" -m -O "$outdir" "$outdir/.config" "$fragment" >&2
kmake olddefconfig

# Every option the fragment asks for must survive Kconfig: a symbol dropped
# here is a missing dependency (or a renamed option), and fails by name.
check_config() {
	local line sym bad=0 got
	while IFS= read -r line || [[ -n $line ]]; do
		is_option "$line" || continue
		if [[ $line == \#* ]]; then
			sym=${line#\# }
			sym=${sym% is not set}
			if grep -q "^$sym=" "$outdir/.config"; then
				got=$(grep "^$sym=" "$outdir/.config")
				printf '%s: Kconfig kept %s (the fragment asks: %s)\n' "$prog" "$got" "$line" >&2
				bad=1
			fi
		else
			sym=${line%%=*}
			if ! grep -qxF -- "$line" "$outdir/.config"; then
				got=$(grep -E "^$sym=|^# $sym is not set" "$outdir/.config" || true)
				printf '%s: Kconfig dropped %s (final: %s)\n' "$prog" "$line" "${got:-absent}" >&2
				bad=1
			fi
		fi
	done <"$fragment"
	((bad == 0)) || die "the final .config lacks options $fragment asks for (missing dependencies?)"
}
check_config

if ((config_only)); then
	log "config checked"
	printf '%s\n' "$outdir/.config"
	exit 0
fi

log "building $target for $arch (nice -n 19 make -j2)"
start=$SECONDS
kmake "$target"
log "built in $((SECONDS - start)) s"
[[ -f $outdir/$image ]] || die "make $target produced no $image"

# --- into the cache: a temp dir renamed whole, `complete` written last ------

tmp=$(mktemp -d "$cache_root/.tmp-$hash.XXXXXX")
cleanup+=("$tmp")
cp "$outdir/$image" "$tmp/$kernel_name"
cp "$outdir/.config" "$tmp/config"
[[ $arch != x86_64 ]] || cp "$outdir/vmlinux" "$tmp/vmlinux"
chmod 0644 "$tmp"/*
chmod 0755 "$tmp"
printf 'arch=%s\nsource=%s %s\nkernel=%s\nsha256=%s\n' "$arch" "$SRC_PKG" "$src_version" \
	"$kernel_name" "$(sha256sum "$tmp/$kernel_name" | cut -d' ' -f1)" >"$tmp/complete"
if [[ -e $entry ]]; then
	old=$(mktemp -d "$cache_root/.old-$hash.XXXXXX")
	cleanup+=("$old")
	mv -T "$entry" "$old/entry"
fi
mv -T "$tmp" "$entry"
printf '%s\n' "$entry/$kernel_name"
