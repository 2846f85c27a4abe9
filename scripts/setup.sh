#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine: mosquitto (and socat, PostgreSQL's server,
# prometheus-alertmanager and nats-server for the dev extra), a C compiler and Python's headers
# (with apt-get when root), a venv in .venv with edgewatch and the extras named in $1 (default: dev).
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"

need_apt=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  need_apt+=(mosquitto mosquitto-clients)
fi
# The notify tests run a real Alertmanager (tests/notify_helpers.py); only the dev extras need it.
if [[ ",$extras," == *",dev,"* ]] && ! command -v prometheus-alertmanager >/dev/null 2>&1 \
    && ! command -v alertmanager >/dev/null 2>&1; then
  need_apt+=(prometheus-alertmanager)
fi
# The dev extra's tests (and the bench) start a private PostgreSQL server: initdb and pg_ctl.
if [[ ",${extras}," == *",dev,"* ]] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && ! command -v initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
# The dev extra's cluster tests start their own 3-node NATS JetStream cluster (nats-server >= 2.9).
if [[ ",${extras}," == *",dev,"* ]] && ! command -v nats-server >/dev/null 2>&1 \
    && [ ! -x /usr/sbin/nats-server ]; then
  need_apt+=(nats-server)
fi
# The Modbus RTU tests link two pseudo-terminals with socat (a null-modem cable).
if [[ ",$extras," == *,dev,* ]] && ! command -v socat >/dev/null 2>&1; then
  need_apt+=(socat)
fi
if ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "edgewatch needs Python >= 3.11 (found: $(python3 --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  need_apt+=(python3-venv)
fi
# A C compiler and Python's headers let pip compile the aggregator's detector (setup.py); without
# them it runs interpreted, at twice the CPU per reading.
if ! command -v cc >/dev/null 2>&1; then
  need_apt+=(gcc libc6-dev)
fi
if ! python3 -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then
  need_apt+=(python3-dev)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if [[ " ${need_apt[*]} " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
      # Tests start their own servers: no system cluster on 5432 from the package's postinst.
      mkdir -p /etc/postgresql-common
      echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    fi
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold "${need_apt[@]}" >/dev/null
  else
    echo "missing system packages: ${need_apt[*]}" >&2
    echo "run: sudo apt-get install -y ${need_apt[*]}   (then run this command again)" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# What the editable install depends on: the metadata, the build hook and the compiled sources.
# When none changed since the last install with these extras, pip has nothing to do (~20 s saved).
stamp=.venv/edgewatch-installed
want="$extras $(cat pyproject.toml setup.py cloud/detect/sensor.py cloud/detect/calibrate.py cloud/detect/shift.py | cksum)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import edgewatch' 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
log=.venv/pip-install.log
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]" >"$log" 2>&1; then
  cat "$log" >&2
  echo "pip install failed (log: $log)" >&2
  exit 1
fi
echo "$want" >"$stamp"
