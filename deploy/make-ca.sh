#!/bin/sh
# Create edgewatch's private CA and the broker's TLS server certificate (first install).
#
# Devices trust only this CA, so a broker certificate from anywhere else is refused. The CA key
# signs device client certificates later (`edgewatch provision DEVICE --ca DIR --client-cert`):
# keep DIR on the cloud host, readable by root only, and back it up.
#
# Idempotent: an existing CA is kept; the server certificate is kept unless --renew-server is given.
# Needs only the openssl command (1.1.1 or 3.x).
#
#   deploy/make-ca.sh --dir /etc/mosquitto/edgewatch/certs --host broker.example.com [--ip 203.0.113.7]
set -eu

DIR=./pki
HOSTS=""
IPS=""
CA_DAYS=3650
SERVER_DAYS=825
RENEW=0
CA_NAME="edgewatch private CA"

usage() {
    cat <<EOF
usage: $0 [--dir DIR] --host NAME [--host NAME ...] [--ip ADDR ...] [--ca-days N]
          [--server-days N] [--renew-server]

Writes DIR/ca.key, DIR/ca.crt (the CA), DIR/server.key and DIR/server.crt (the broker's
certificate for every --host and --ip; devices connect to one of those names).
EOF
}

die() {
    echo "make-ca: $*" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dir) [ $# -ge 2 ] || die "--dir needs a value"; DIR=$2; shift 2 ;;
        --host) [ $# -ge 2 ] || die "--host needs a value"; HOSTS="$HOSTS $2"; shift 2 ;;
        --ip) [ $# -ge 2 ] || die "--ip needs a value"; IPS="$IPS $2"; shift 2 ;;
        --ca-days) [ $# -ge 2 ] || die "--ca-days needs a value"; CA_DAYS=$2; shift 2 ;;
        --server-days) [ $# -ge 2 ] || die "--server-days needs a value"; SERVER_DAYS=$2; shift 2 ;;
        --renew-server) RENEW=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install openssl)"
[ -n "$HOSTS$IPS" ] || { usage >&2; die "give at least one --host or --ip for the broker"; }

umask 077
mkdir -p "$DIR"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM

if [ -f "$DIR/ca.key" ] && [ -f "$DIR/ca.crt" ]; then
    echo "make-ca: keeping the existing CA in $DIR"
else
    [ ! -f "$DIR/ca.key" ] && [ ! -f "$DIR/ca.crt" ] \
        || die "$DIR holds only half a CA (ca.key or ca.crt missing); restore it or remove both"
    cat >"$WORK/ca.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = $CA_NAME
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/ca.key"
    openssl req -new -x509 -config "$WORK/ca.cnf" -key "$WORK/ca.key" -sha256 \
        -days "$CA_DAYS" -out "$WORK/ca.crt"
    mv "$WORK/ca.key" "$DIR/ca.key"
    mv "$WORK/ca.crt" "$DIR/ca.crt"
    chmod 600 "$DIR/ca.key"
    chmod 644 "$DIR/ca.crt"
    echo "make-ca: created the CA: $DIR/ca.crt (copy it to devices; keep ca.key secret)"
fi

# A CRL for the client-certificate listener (mosquitto refuses to start without the file). Revoking
# needs `openssl ca`'s small database; `edgewatch provision --rotate --client-cert` uses it too.
if [ ! -f "$DIR/ca.cnf" ]; then
    cat >"$DIR/ca.cnf" <<'EOF'
# openssl ca settings for revoking edgewatch client certificates; set EDGEWATCH_CA_DIR to use.
[ca]
default_ca = edgewatch
[edgewatch]
dir = $ENV::EDGEWATCH_CA_DIR
database = $dir/index.txt
crlnumber = $dir/crlnumber
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
# The CRL must outlive the broker's uptime: an expired CRL makes OpenSSL refuse every client.
default_crl_days = 3650
EOF
fi
[ -f "$DIR/index.txt" ] || : >"$DIR/index.txt"
[ -f "$DIR/crlnumber" ] || echo 1000 >"$DIR/crlnumber"
if [ ! -f "$DIR/crl.pem" ]; then
    EDGEWATCH_CA_DIR=$DIR openssl ca -config "$DIR/ca.cnf" -gencrl -out "$DIR/crl.pem" 2>"$WORK/err" \
        || { cat "$WORK/err" >&2; die "could not create $DIR/crl.pem"; }
    chmod 644 "$DIR/crl.pem"
    echo "make-ca: created an empty revocation list: $DIR/crl.pem"
fi

if [ -f "$DIR/server.crt" ] && [ -f "$DIR/server.key" ] && [ "$RENEW" = 0 ]; then
    echo "make-ca: keeping the existing server certificate (use --renew-server to replace it)"
    exit 0
fi

SAN=""
for h in $HOSTS; do SAN="$SAN${SAN:+,}DNS:$h"; done
for ip in $IPS; do SAN="$SAN${SAN:+,}IP:$ip"; done
FIRST=$(echo $HOSTS $IPS | cut -d' ' -f1)
cat >"$WORK/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $SAN
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/server.key"
openssl req -new -key "$WORK/server.key" -subj "/CN=$FIRST" -out "$WORK/server.csr"
SERIAL=0x$(openssl rand -hex 16)
openssl x509 -req -in "$WORK/server.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" \
    -set_serial "$SERIAL" -sha256 -days "$SERVER_DAYS" -extfile "$WORK/server.ext" \
    -out "$WORK/server.crt" 2>/dev/null
mv "$WORK/server.key" "$DIR/server.key"
mv "$WORK/server.crt" "$DIR/server.crt"
# mosquitto reads the key as its own user when it reloads; group-readable lets `chgrp mosquitto` work.
chmod 640 "$DIR/server.key"
chmod 644 "$DIR/server.crt"
echo "make-ca: issued $DIR/server.crt for:$HOSTS$IPS (valid $SERVER_DAYS days)"
