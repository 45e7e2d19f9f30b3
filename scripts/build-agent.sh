#!/usr/bin/env bash
# Builds the statically linked guest agent into target/agent/<triple>/release.
# --target keeps the static flags off build scripts and proc-macros.
set -euo pipefail
cd "$(dirname "$0")/.."
triple="$(uname -m)-unknown-linux-gnu"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p cordon-agent \
  --target "$triple" --target-dir target/agent
echo "target/agent/$triple/release/cordon-agent"
