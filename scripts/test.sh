#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, the static agent, every
# crate's unit tests and the black-box integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
scripts/build-agent.sh >/dev/null
cargo build --workspace --quiet
# Build (or reuse) the guest image once, before the VM tests run in parallel.
CORDON_AGENT="$PWD/target/agent/$(uname -m)-unknown-linux-gnu/release/cordon-agent" target/debug/cordon image build >/dev/null
cargo test --workspace --quiet "$@"
