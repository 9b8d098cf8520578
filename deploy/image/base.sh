#!/usr/bin/env bash
# Prints the base image for the Dockerfile's stages (its BASE_IMAGE build argument), and says
# on stderr where it came from:
#   1. python:3.11-slim, if buildah's storage has it or a registry gives it;
#   2. otherwise a stand-in made here from Debian bookworm's own packages with debootstrap
#      (bookworm ships Python 3.11): minbase plus python3, python3-venv and ca-certificates,
#      without apt's lists and caches, documentation or translations. It is kept in buildah's
#      storage under a tag that names this script's hash, so it is made once per recipe.
# Needs root (buildah's storage, debootstrap's chroot), buildah and debootstrap.
set -euo pipefail

OFFICIAL=docker.io/library/python:3.11-slim
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if buildah inspect --type image "$OFFICIAL" > /dev/null 2>&1; then
  echo "base: $OFFICIAL (already in buildah's storage)" >&2
  echo "$OFFICIAL"
  exit 0
fi
if timeout 120 buildah pull --quiet "$OFFICIAL" > /dev/null 2> /dev/null; then
  echo "base: $OFFICIAL (pulled)" >&2
  echo "$OFFICIAL"
  exit 0
fi

recipe=$(sha256sum "$0" | cut -c1-12)
STANDIN=localhost/escalator-base:python3.11-bookworm-$recipe
echo "base: no registry gave $OFFICIAL; using a stand-in built from Debian bookworm's" \
  "packages with debootstrap: $STANDIN" >&2
if buildah inspect --type image "$STANDIN" > /dev/null 2>&1; then
  echo "base: $STANDIN is already in buildah's storage" >&2
  echo "$STANDIN"
  exit 0
fi

started=$(date +%s)
ctr=$(buildah from --quiet scratch)
trap 'buildah rm "$ctr" > /dev/null 2>&1 || true' EXIT
root=$(buildah mount "$ctr")
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$MIRROR" > /dev/null
# What an image does not need at run time (python:3.11-slim drops the same).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/usr/share/locale/* "$root"/var/log/* "$root"/tmp/*
# debootstrap copied these from the host; a container runtime provides its own.
rm -f "$root"/etc/resolv.conf "$root"/etc/hostname
buildah umount "$ctr" > /dev/null
buildah config \
  --env LANG=C.UTF-8 \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --cmd '["python3"]' \
  --label "org.opencontainers.image.description=Stand-in for python:3.11-slim: Debian bookworm minbase with python3 (3.11), python3-venv and ca-certificates, made with debootstrap" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$STANDIN" > /dev/null
trap - EXIT
echo "base: made $STANDIN in $(( $(date +%s) - started )) s" >&2
echo "$STANDIN"
