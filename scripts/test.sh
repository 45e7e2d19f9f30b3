#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, the static agent, every
# crate's unit tests and the black-box integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
scripts/build-agent.sh >/dev/null
cargo build --workspace --quiet
# Build (or reuse) the guest images once, before the tests run in parallel:
# the boot image, and the Debian userland (mmdebstrap; about a minute, then
# cached under ~/.cache/cordon/userlands).
export CORDON_AGENT="$PWD/target/agent/$(uname -m)-unknown-linux-gnu/release/cordon-agent"
# cordon's own kernel (kernel-config/build.sh: minutes once per machine,
# then cached), which the VM tests boot by default (`--kernel auto`); the
# Debian kernel's boot image too, for the tests that ask for it.
kernel-config/build.sh "$(uname -m)" >/dev/null
target/debug/cordon image build --kernel cordon >/dev/null
target/debug/cordon image build --kernel debian >/dev/null
target/debug/cordon image build debian --quiet >/dev/null
cargo test --workspace --quiet "$@"
# The README's build (scripts/build.sh: cordon static-pie) and a namespace
# run with it, so the first command's binary is the one CI checked.
scripts/build.sh >/dev/null
target/release/cordon run --isolation namespace --no-stdin -- true
