#!/bin/sh
# Install the edgewatch agent on a Raspberry Pi (or any Debian-like host) as a hardened service.
#
#   sudo deploy/install-agent.sh --config provisioned/pi-1      # the bundle from `edgewatch provision`
#
# What it does, each step skipped when already done (so it is safe to run again, e.g. to upgrade):
#   1. a system user `edgewatch` (in the i2c and gpio groups where they exist)
#   2. a venv in /opt/edgewatch/venv with `edgewatch[i2c]` from --source (a source dir or a wheel)
#   3. the device's config bundle into /etc/edgewatch (agent.toml, ca.crt, client cert/key), checked
#   4. /var/lib/edgewatch for the outbox
#   5. the systemd unit, enabled and (re)started when something changed
#
# --prefix DIR puts every path under DIR and touches nothing outside it (no user, no systemctl):
# for building images and for tests. --no-systemd skips the user, ownership and systemctl.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=""
SOURCE="$HERE/.."
CONFIG=""
SYSTEMD=1
PYTHON=python3
EXTRAS=i2c
VENV_ARGS=""
USER_NAME=edgewatch
UNIT=edgewatch-agent.service

usage() {
    cat <<EOF
usage: $0 [--config BUNDLE_DIR|agent.toml] [--source DIR|WHEEL] [--prefix DIR] [--no-systemd]
          [--python PYTHON] [--extras i2c] [--system-site-packages]

  --config     the device's bundle from \`edgewatch provision\` (or just an agent.toml)
  --source     edgewatch source directory or wheel (default: this script's checkout)
  --prefix     install under DIR instead of / (implies no user and no systemctl)
  --no-systemd do not create the user, change ownership or call systemctl
  --python     the interpreter for the venv (>= 3.11; default python3)
  --extras     pip extras to install (default i2c; "" for none)
  --system-site-packages  let the venv see distro packages (e.g. apt's python3-smbus2)
EOF
}

die() {
    echo "install-agent: $*" >&2
    exit 2
}

say() {
    echo "install-agent: $*"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; PREFIX=$2; shift 2 ;;
        --source) [ $# -ge 2 ] || die "--source needs a value"; SOURCE=$2; shift 2 ;;
        --config) [ $# -ge 2 ] || die "--config needs a value"; CONFIG=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs a value"; PYTHON=$2; shift 2 ;;
        --extras) [ $# -ge 2 ] || die "--extras needs a value"; EXTRAS=$2; shift 2 ;;
        --no-systemd) SYSTEMD=0; shift ;;
        --system-site-packages) VENV_ARGS="--system-site-packages"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

if [ -n "$PREFIX" ]; then
    mkdir -p "$PREFIX"
    PREFIX=$(cd "$PREFIX" && pwd)
    SYSTEMD=0
fi
OPT="$PREFIX/opt/edgewatch"
VENV="$OPT/venv"
ETC="$PREFIX/etc/edgewatch"
STATE="$PREFIX/var/lib/edgewatch"
UNIT_DIR="$PREFIX/etc/systemd/system"
CHANGED=0

if [ "$SYSTEMD" = 1 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo), or use --prefix/--no-systemd for an unprivileged install"
fi

# -- checks ---------------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (apt-get install python3)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "edgewatch needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1) (Raspberry Pi OS bookworm or later)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PYTHON cannot create venvs: apt-get install python3-venv"
if [ -d "$SOURCE" ]; then
    [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not an edgewatch source directory (no pyproject.toml)"
    SOURCE=$(cd "$SOURCE" && pwd)
elif [ -f "$SOURCE" ]; then
    case "$SOURCE" in *.whl) ;; *) die "--source must be a directory or a .whl file" ;; esac
else
    die "--source $SOURCE does not exist"
fi
if [ -n "$CONFIG" ]; then
    if [ -d "$CONFIG" ]; then
        [ -f "$CONFIG/agent.toml" ] || die "$CONFIG has no agent.toml (give the bundle from edgewatch provision)"
    else
        [ -f "$CONFIG" ] || die "--config $CONFIG does not exist"
    fi
fi

# -- 1. user --------------------------------------------------------------------------------------
if [ "$SYSTEMD" = 1 ]; then
    if ! getent passwd "$USER_NAME" >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/edgewatch --no-create-home \
            --shell /usr/sbin/nologin --comment "edgewatch agent" "$USER_NAME"
        say "created system user $USER_NAME"
    fi
    for group in i2c gpio; do
        if getent group "$group" >/dev/null && ! id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx "$group"; then
            usermod -a -G "$group" "$USER_NAME"
            say "added $USER_NAME to group $group"
        fi
    done
fi

# -- 2. venv and package --------------------------------------------------------------------------
mkdir -p "$OPT"
if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    # A venv whose interpreter vanished (e.g. after an OS upgrade) is rebuilt from scratch.
    rm -rf "$VENV"
    # shellcheck disable=SC2086
    "$PYTHON" -m venv $VENV_ARGS "$VENV"
    say "created venv $VENV"
    CHANGED=1
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM
SPEC_EXTRAS=""
[ -n "$EXTRAS" ] && SPEC_EXTRAS="[$EXTRAS]"
if [ -d "$SOURCE" ]; then
    # Build from a clean copy: pip would otherwise write build/ and *.egg-info into the checkout.
    mkdir "$WORK/src"
    (cd "$SOURCE" && tar -cf - --sort=name --exclude=.git --exclude=.venv --exclude=venv --exclude=build \
        --exclude=dist --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.so' --exclude=tests --exclude=bench .) \
        >"$WORK/src.tar"
    (cd "$WORK/src" && tar -xf ../src.tar)
    DIGEST=$(cksum <"$WORK/src.tar")
    TARGET="$WORK/src$SPEC_EXTRAS"
else
    DIGEST=$(cksum <"$SOURCE")
    TARGET="$SOURCE$SPEC_EXTRAS"
fi
# The same source, extras and interpreter as last time: pip would only rebuild the same thing.
STAMP="$OPT/.installed"
WANT="$DIGEST $SPEC_EXTRAS $("$VENV/bin/python" -V 2>&1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV/bin/edgewatch" --version >/dev/null 2>&1; then
    :
else
    # EDGEWATCH_COMPILE=0: the aggregator's compiled detector is of no use on a device (setup.py).
    EDGEWATCH_COMPILE=0 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$TARGET" \
        || die "pip install failed (see above); no internet? build a wheel elsewhere and pass --source FILE.whl"
    echo "$WANT" >"$STAMP"
    CHANGED=1
fi
VERSION=$("$VENV/bin/edgewatch" --version) || die "the installed edgewatch does not start"
say "$VERSION in $VENV"

# -- 3. config ------------------------------------------------------------------------------------
# root:edgewatch 0750/0640: the service reads its credential, nobody else does.
install_file() { # SRC DST MODE
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        return 0
    fi
    if [ -f "$2" ]; then
        cp -p "$2" "$2.bak"
        say "replacing $2 (previous copy in $2.bak)"
    fi
    install -m "$3" "$1" "$2.new"
    [ "$SYSTEMD" = 1 ] && chgrp "$USER_NAME" "$2.new"
    mv "$2.new" "$2"
    say "installed $2"
    CHANGED=1
}
mkdir -p "$ETC"
chmod 0750 "$ETC"
[ "$SYSTEMD" = 1 ] && chgrp "$USER_NAME" "$ETC"
if [ -d "$CONFIG" ]; then
    for name in agent.toml ca.crt client.crt client.key; do
        [ -f "$CONFIG/$name" ] && install_file "$CONFIG/$name" "$ETC/$name" 0640
    done
elif [ -n "$CONFIG" ]; then
    install_file "$CONFIG" "$ETC/agent.toml" 0640
fi
if [ -f "$ETC/agent.toml" ]; then
    # Refuse a config the agent would refuse, before the service starts crash-looping on it.
    "$VENV/bin/python" -c 'import sys
from devices.errors import EdgewatchError
from edge.config import load_config
try:
    load_config(sys.argv[1])
except EdgewatchError as exc:
    sys.exit(f"install-agent: {exc}")' "$ETC/agent.toml"
else
    say "no $ETC/agent.toml yet: provision the device, then run again with --config BUNDLE"
fi

# -- 4. state -------------------------------------------------------------------------------------
mkdir -p "$STATE"
chmod 0750 "$STATE"
[ "$SYSTEMD" = 1 ] && chown "$USER_NAME:$USER_NAME" "$STATE"

# -- 5. unit --------------------------------------------------------------------------------------
mkdir -p "$UNIT_DIR"
sed -e "s#/opt/edgewatch/#$OPT/#g" -e "s#/etc/edgewatch/#$ETC/#g" \
    "$HERE/systemd/$UNIT" >"$WORK/$UNIT"
install_file "$WORK/$UNIT" "$UNIT_DIR/$UNIT" 0644

if [ "$SYSTEMD" = 1 ]; then
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable --quiet "$UNIT"
        if [ -f "$ETC/agent.toml" ]; then
            if [ "$CHANGED" = 1 ]; then
                systemctl restart "$UNIT"
                say "restarted $UNIT"
            else
                systemctl start "$UNIT"
            fi
            say "running: journalctl -u ${UNIT%.service} -f   |   edgewatch agent status --config $ETC/agent.toml"
        fi
    else
        say "systemd is not running here: the unit is installed but not started"
    fi
fi
[ "$CHANGED" = 1 ] || say "everything was already in place; nothing changed"
