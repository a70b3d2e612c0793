#!/usr/bin/env bash
# Install the Debian packages the tests need when they are missing: chromium and
# chromium-driver (the browser test), iproute2 (tc: the link shaping test), zip (Info-ZIP, as
# archivists zip their bags: tests/test_real_zips.py). Needs root and
# apt-get; otherwise says what to install.
set -euo pipefail

packages=(chromium chromium-driver iproute2 zip)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-system-packages: please install: ${missing[*]} (Debian packages)" >&2
    exit 0
fi
echo "install-system-packages: installing ${missing[*]}" >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
