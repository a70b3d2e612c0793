#!/usr/bin/env bash
# Build the stand-in images the deployment test needs, locally (no registry is reachable):
#   bdrc-test/bookworm-python:3.11  Debian bookworm from debootstrap with Python 3.11
#   bdrc-test/postgres:15           Debian's PostgreSQL honouring POSTGRES_* like the official one
#   bdrc-test/moto:5.2.5            the moto S3/SQS server
#   bdrc-test/redis:7               Debian's redis-server (the Celery broker)
# Images that exist are reused; REBUILD=1 builds them again.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${BDRC_TEST_CACHE:-/var/tmp/bdrc-test-images}
venv=$(bash "$repo/scripts/ensure-venv.sh")
base=bdrc-test/bookworm-python:3.11

exists() { [ "${REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

if ! exists "$base"; then
    command -v debootstrap >/dev/null || { echo "build-test-images: install debootstrap" >&2; exit 1; }
    rm -rf "$cache/rootfs"
    mkdir -p "$cache"
    echo "==> debootstrap bookworm into $cache/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$cache/rootfs" http://deb.debian.org/debian > "$cache/debootstrap.log" 2>&1 \
        || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
    tar -C "$cache/rootfs" -c . | docker import - "$base" >/dev/null
    rm -rf "$cache/rootfs"
fi
if ! exists bdrc-test/postgres:15; then
    echo "==> building bdrc-test/postgres:15"
    docker build -q -t bdrc-test/postgres:15 "$here/postgres" >/dev/null
fi
if ! exists bdrc-test/redis:7; then
    echo "==> building bdrc-test/redis:7"
    docker build -q -t bdrc-test/redis:7 "$here/redis" >/dev/null
fi
if ! exists bdrc-test/moto:5.2.5; then
    echo "==> building bdrc-test/moto:5.2.5"
    ctx=$(mktemp -d)
    cp "$here/moto/Dockerfile" "$ctx/"
    "$venv/bin/python" -m pip wheel -q --disable-pip-version-check "moto[server,s3,sqs]" \
        -c "$repo/requirements/test.lock" -w "$ctx/wheels" 2> >(grep -v "is ignored" >&2)
    docker build -q -t bdrc-test/moto:5.2.5 "$ctx" >/dev/null
    rm -rf "$ctx"
fi
echo "==> test images ready"
