#!/usr/bin/env bash
# Make a Docker engine available for the deployment test: install Debian's docker.io,
# docker-compose and debootstrap when missing, and start dockerd when none runs.
# Needs root and apt-get; otherwise it says what is missing and leaves the test to skip.
set -euo pipefail

if docker info >/dev/null 2>&1 && command -v debootstrap >/dev/null \
        && { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; }; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "prepare-docker: needs root to install docker.io docker-compose debootstrap" >&2
    exit 0
fi
missing=()
for pkg in docker.io docker-compose debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "prepare-docker: installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
if ! docker info >/dev/null 2>&1; then
    echo "prepare-docker: starting dockerd (log: /var/log/dockerd-ci.log)" >&2
    nohup dockerd > /var/log/dockerd-ci.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -n 20 /var/log/dockerd-ci.log >&2; exit 1; }
fi
