#!/usr/bin/env bash
# Build the stand-in images the deployment test needs, locally (no registry is reachable):
#   bdrc-test/bookworm-python:3.11  Debian bookworm from debootstrap with Python 3.11
#   bdrc-test/postgres:15           Debian's PostgreSQL honouring POSTGRES_* like the official one
#   bdrc-test/moto:5.2.5            the moto S3/SQS server
#   bdrc-test/redis:7               Debian's redis-server (the Celery broker)
# Images that exist are reused; REBUILD=1 builds them again.
#
# Usage: build-test-images.sh [base|postgres|redis|moto ...]   (default: all four)
# The others are built FROM the base image, so `base` alone can go first and the rest later,
# beside the pipeline's own image build (tests/test_docker_deploy.py does that).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${BDRC_TEST_CACHE:-/var/tmp/bdrc-test-images}
base=bdrc-test/bookworm-python:3.11

exists() { [ "${REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(base postgres redis moto)
for name in "${wanted[@]}"; do
    case $name in
        base|postgres|redis|moto) ;;
        *) echo "build-test-images: unknown image '$name'; use base, postgres, redis or moto" >&2; exit 2 ;;
    esac
done
# want NAME: NAME is among the images asked for.
want() { printf '%s\n' "${wanted[@]}" | grep -qx "$1"; }
if ! want base && ! docker image inspect "$base" >/dev/null 2>&1; then
    echo "build-test-images: $base is missing; build it first (build-test-images.sh base)" >&2
    exit 1
fi

if want base && ! exists "$base"; then
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
if want postgres && ! exists bdrc-test/postgres:15; then
    echo "==> building bdrc-test/postgres:15"
    docker build -q -t bdrc-test/postgres:15 "$here/postgres" >/dev/null
fi
if want redis && ! exists bdrc-test/redis:7; then
    echo "==> building bdrc-test/redis:7"
    docker build -q -t bdrc-test/redis:7 "$here/redis" >/dev/null
fi
if want moto && ! exists bdrc-test/moto:5.2.5; then
    echo "==> building bdrc-test/moto:5.2.5"
    venv=$(bash "$repo/scripts/ensure-venv.sh")
    ctx=$(mktemp -d)
    cp "$here/moto/Dockerfile" "$ctx/"
    "$venv/bin/python" -m pip wheel -q --disable-pip-version-check "moto[server,s3,sqs]" \
        -c "$repo/requirements/test.lock" -w "$ctx/wheels" 2> >(grep -v "is ignored" >&2)
    docker build -q -t bdrc-test/moto:5.2.5 "$ctx" >/dev/null
    rm -rf "$ctx"
fi
echo "==> test images ready: ${wanted[*]}"
