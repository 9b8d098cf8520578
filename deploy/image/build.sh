#!/usr/bin/env bash
# `make image`: builds the Dockerfile with buildah, no Docker engine needed: the service image
# (default target) and the emulator target, tagged as deploy/compose.yaml names them.
#   deploy/image/build.sh [IMAGE] [EMULATOR_IMAGE]
# The base is python:3.11-slim, or a stand-in from Debian's packages when no registry gives it
# (base.sh says which). This machine's pip configuration and CA bundle, when it has them, go in
# as build secrets: mounted read-only for the pip steps only, never written to a layer.
# Needs root: buildah's storage and its chroot isolation, and debootstrap for the stand-in.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${1:-localhost/escalator:local}
EMULATOR_IMAGE=${2:-localhost/escalator-emulator:local}

if [ "$(id -u)" != 0 ]; then
  echo "make image needs root (buildah's storage and chroot isolation, debootstrap)" >&2
  exit 2
fi
for tool in buildah debootstrap; do
  command -v "$tool" > /dev/null || { echo "$tool is not installed: run \`make tools\`" >&2; exit 2; }
done

base=$(deploy/image/base.sh)
secrets=()
pip_conf=${PIP_CONFIG_FILE:-/etc/pip.conf}
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$pip_conf" ] && secrets+=(--secret "id=pip.conf,src=$pip_conf")
[ -f "$ca_bundle" ] && secrets+=(--secret "id=ca-bundle,src=$ca_bundle")
echo "build secrets (read-only, pip steps only): ${secrets[*]:-none}"

build() {
  buildah bud --isolation chroot --format docker --layers --force-rm \
    --build-arg "BASE_IMAGE=$base" "${secrets[@]}" "$@" .
}
started=$(date +%s)
build --tag "$IMAGE"
build --target emulator --tag "$EMULATOR_IMAGE"
elapsed=$(( $(date +%s) - started ))
# --format docker keeps the HEALTHCHECK (the OCI image format has no such field).
echo "built $IMAGE and $EMULATOR_IMAGE from $base in ${elapsed} s"
for name in "$IMAGE" "$EMULATOR_IMAGE"; do
  echo "size: $name $(buildah images --format '{{.Size}}' "$name")"
done
