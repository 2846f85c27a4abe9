#!/usr/bin/env bash
# Sets up edgewatch on a fresh Debian/Ubuntu machine and runs the demo: a broker, the aggregator,
# a fleet of simulated devices with faults, and alerts live on screen. Ctrl-C stops it.
# Extra arguments go to `edgewatch demo` (e.g. scripts/demo.sh --devices 50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh cloud,demo
exec .venv/bin/edgewatch demo "$@"
