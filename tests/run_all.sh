#!/usr/bin/env bash
# Runs every test of the workspace from a fresh clone: installs what the tests need (a local
# Python venv with webdataset, openapi-spec-validator, schemathesis and kubernetes-validate;
# nginx from the distribution), type-checks the CUDA build, then runs the Rust tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-test
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check webdataset==1.0.2 pillow numpy \
  openapi-spec-validator==0.9.0 schemathesis==4.32.5 kubernetes-validate==1.37.0
export GENREP_TEST_PYTHON="$PWD/$VENV/bin/python"
# nginx for the replica test (tests/replicas.rs), from the distribution's packages.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light
fi
# One build per CI run: incremental state would only add gigabytes to the disk.
export CARGO_INCREMENTAL=0
cargo fmt --all -- --check
# The CUDA backend type-checks (toolkit from pinned PyPI wheels; no GPU needed).
bash scripts/build-cuda.sh check 90
# Unit, integration and doc tests of every crate (benchmarks are runners, not tests; they are
# only type-checked here).
cargo test --workspace
cargo check --workspace --benches
