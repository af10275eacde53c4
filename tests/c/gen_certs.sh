#!/usr/bin/env bash
# Writes a throw-away CA and one certificate per DC into DIR for the TLS
# test and benchmark: ca.crt, dcN.crt, dcN.key (N = 1, 2), each leaf with its
# local_host (dcN.example.com) as DNS SAN plus 127.0.0.1, usable as server
# and client (mutual TLS). Nothing here is secret or committed.
set -euo pipefail
dir=${1:?usage: gen_certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=global_distrib test CA $(basename "$dir")" -keyout ca.key -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
for n in 1 2; do
    host="dc$n.example.com"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=$host" -keyout "dc$n.key" -out "dc$n.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:$host,IP:127.0.0.1" \
        "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth,clientAuth" > "dc$n.ext"
    openssl x509 -req -in "dc$n.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -days 2 -extfile "dc$n.ext" -out "dc$n.crt" 2>/dev/null
    rm -f "dc$n.csr" "dc$n.ext"
done
