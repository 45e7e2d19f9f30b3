#!/usr/bin/env bash
# Builds what a run needs, as the README's first command does: the static
# guest agent (scripts/build-agent.sh), the workspace's release binaries
# (`cargo build --release`: cordon, the benchmarks), and then cordon itself
# once more as a static-pie executable over target/release/cordon.
#
# Why static: every `cordon run` starts cordon and forks its helpers
# (ns-init, the janitor) from it. Without the dynamic loader there are no
# libraries to map and no symbols to look up at each start, and fewer
# mappings to copy at each fork and tear down at each exit: about 1 ms less
# per namespace run on this machine (bench-ns). It stays position
# independent (ASLR), glibc is the same, and cordon calls nothing that
# needs glibc's NSS modules at run time (no getaddrinfo, no getpwnam).
#
# A plain `cargo build --release` afterwards puts the dynamic binary back;
# both work, and bench-ns says which one it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/build-agent.sh >/dev/null
cargo build --release --quiet
triple="$(uname -m)-unknown-linux-gnu"
# With --target, RUSTFLAGS reach only the target's crates, never the
# proc-macros and build scripts (which cannot be static).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p cordon --bin cordon \
  --target "$triple" --target-dir target/static
# A new file renamed into place: a cordon running from the old one keeps it.
install -m 0755 "target/static/$triple/release/cordon" target/release/.cordon.static
mv -f target/release/.cordon.static target/release/cordon
echo target/release/cordon
