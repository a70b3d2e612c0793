#!/usr/bin/env bash
# Create, or reuse when the lock files have not changed, the project virtual environment
# (.venv, or $VENV) from the pinned lock files in requirements/. Prints the venv path.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-$repo/.venv}
uv_version=0.13.9
locks=("$repo/requirements/base.lock" "$repo/requirements/test.lock")
stamp="$venv/.locks.sha256"
# "bytecode": venvs made before the install compiled bytecode are brought up to date once.
want=$( (cat "${locks[@]}" "$repo/pyproject.toml"; echo bytecode) | sha256sum | cut -d' ' -f1)

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "$venv"
    exit 0
fi

python=${PYTHON:-}
if [ -z "$python" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
    done
fi
if [ -z "$python" ] || ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "ensure-venv: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

echo "ensure-venv: installing the locked requirements into $venv (a few minutes the first time)" >&2
# uv's build locks (uv-setuptools-*.lock) and pip's build folders go into a folder of this run's
# own, removed however it ends: nothing is left in the machine's /tmp.
own_tmp=$(mktemp -d "${TMPDIR:-/tmp}/ensure-venv.XXXXXX")
trap 'rm -rf "$own_tmp"' EXIT
export TMPDIR=$own_tmp
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip --version >/dev/null 2>&1 || "$venv/bin/python" -m ensurepip >/dev/null
"$venv/bin/python" -m pip install -q --disable-pip-version-check "uv==$uv_version" >&2
VIRTUAL_ENV=$venv "$venv/bin/uv" pip install -q -r "${locks[0]}" -r "${locks[1]}" >&2
VIRTUAL_ENV=$venv "$venv/bin/uv" pip install -q --no-deps -e "$repo" >&2
# Bytecode now: uv writes none, and with PYTHONDONTWRITEBYTECODE=1 (set on many machines and
# containers) every process would compile its imports from source at every start (Airflow's
# task runner: about 5 s instead of 2).
echo "ensure-venv: compiling bytecode" >&2
"$venv/bin/python" -m compileall -q -j 0 "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true
echo "$want" > "$stamp"
echo "$venv"
