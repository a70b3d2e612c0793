#!/usr/bin/env bash
# bdrc-docker.sh - build the pipeline's Docker image in a build folder, with Compose.
#
# Usage: ./bdrc-docker.sh [options]
#   --build-dir DIR       the build folder (COMPOSE_BUILD_DIR; default: <checkout>/build/compose)
#   --rebuild             wipe the build folder first (otherwise files are added to it)
#   --sync-scripts DIR    folder with syncOneWork.sh and friends (the archive's own scripts);
#                         default: the project's src/glacier_sync/sync_scripts
#   --requirements FILE   extra pip requirements resolved together with requirements/base.lock
#                         by uv (repeatable; requirement lines only, no pip options); a conflict,
#                         direct or through dependencies, stops the build naming the files
#   --config-dir DIR      a config folder to put in the image at CONFIG_ROOT (e.g. the audit
#                         tool's settings folder; never your whole ~/.config); refused when it
#                         holds credentials (key files, passwords, tokens, AWS keys)
#   --base-image IMAGE    BASE_IMAGE (default python:3.11-slim-bookworm)
#   --image NAME          image name (default bdrc-airflow:latest)
#   --prepare-only        fill the build folder, do not run the build
#   --build-only          build the image from a folder --prepare-only filled, with the settings
#                         it wrote there (build.env); only --build-dir goes with it
#   -h, --help            this help
#
# Python packages are built into a wheelhouse on this host (which reaches PyPI) so that the image
# build needs no PyPI access. Works with `docker compose` (v2) and `docker-compose` (1.29).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build_dir=${COMPOSE_BUILD_DIR:-$repo/build/compose}
rebuild=0
sync_scripts=$repo/src/glacier_sync/sync_scripts
config_dir=""
extra_reqs=()
prepare_only=0
build_only=0
other_options=()   # what --build-only refuses: the prepared folder already decided it
export BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
export BDRC_IMAGE=${BDRC_IMAGE:-bdrc-airflow:latest}
export SYNC_SCRIPTS_HOME=${SYNC_SCRIPTS_HOME:-/opt/bdrc/sync-scripts}
export CONFIG_ROOT=${CONFIG_ROOT:-/home/airflow/.config}
export PY_REQS=requirements.txt

me=bdrc-docker.sh
# shellcheck source=scripts/shell-common.sh
source "$repo/scripts/shell-common.sh"   # usage, say
die() { fail "$@"; }   # this script's errors all exit 1

while [ $# -gt 0 ]; do
    case "$1" in
        --build-dir) build_dir=${2:?--build-dir needs a folder}; shift 2 ;;
        --build-only) build_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --rebuild|--prepare-only) other_options+=("$1") ;;&
        --sync-scripts|--requirements|--config-dir|--base-image|--image) other_options+=("$1") ;;&
        --rebuild) rebuild=1; shift ;;
        --sync-scripts) sync_scripts=${2:?--sync-scripts needs a folder}; shift 2 ;;
        --requirements) extra_reqs+=("${2:?--requirements needs a file}"); shift 2 ;;
        --config-dir) config_dir=${2:?--config-dir needs a folder}; shift 2 ;;
        --base-image) BASE_IMAGE=${2:?--base-image needs an image}; shift 2 ;;
        --image) BDRC_IMAGE=${2:?--image needs a name}; shift 2 ;;
        --prepare-only) prepare_only=1; shift ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

if [ "$build_only" -eq 1 ] && [ ${#other_options[@]} -gt 0 ]; then
    die "--build-only builds what --prepare-only prepared in $build_dir; leave out ${other_options[*]} (give them to the --prepare-only run)"
fi

# build_prepared: the image from the folder a --prepare-only run filled, with its build.env.
build_prepared() {
    local env_file=$build_dir/build.env key value
    [ -f "$env_file" ] || die "--build-only: $env_file is missing; fill $build_dir first with --prepare-only"
    while IFS='=' read -r key value; do
        case $key in
            COMPOSE_BUILD_DIR) ;;   # where the folder is now: --build-dir (it may have moved)
            BASE_IMAGE|BDRC_IMAGE|SYNC_SCRIPTS_HOME|PY_REQS|CONFIG_ROOT) export "$key=$value" ;;
            *) die "--build-only: $env_file line '$key=...' is not one bdrc-docker.sh writes; prepare the folder again" ;;
        esac
    done < "$env_file"
    COMPOSE_BUILD_DIR=$(cd "$build_dir" && pwd)
    export COMPOSE_BUILD_DIR
    say "building $BDRC_IMAGE from $BASE_IMAGE (prepared in $build_dir)"
    compose -p bdrc-build -f "$build_dir/bdrc-docker-compose.yml" build airflow-init
    say "built $BDRC_IMAGE; next: ./deploy.sh --dest DIR --env dev|prod"
}

# reject_pip_options FILE: requirement lines only; pip options (-r, -e, --index-url, ...) would
# reach past the file or change where packages come from.
reject_pip_options() {
    local file=$1 hit option
    hit=$(grep -m1 -nE '^[[:space:]]*-' "$file") || return 0
    read -r option _ <<< "${hit#*:}"
    die "--requirements $file line ${hit%%:*}: pip options ($option) are not supported; list the requirements themselves"
}

[ -f "$sync_scripts/syncOneWork.sh" ] || die "--sync-scripts $sync_scripts has no syncOneWork.sh"
for req in "${extra_reqs[@]}"; do
    [ -f "$req" ] || die "--requirements $req does not exist"
    reject_pip_options "$req"
done

# A secret in a config file: AWS keys and tokens, a private key block, a password, secret, token
# or API key with a value (extended grep).
credential_pattern='aws_secret_access_key|aws_session_token|-----BEGIN [A-Z ]*PRIVATE KEY-----|(^|[^[:alpha:]])(A3T[A-Z0-9]|AKIA|ASIA)[A-Z0-9]{16}([^[:alnum:]]|$)|(^|[^[:alpha:]])(password|passwd|secret|token|api_?key)[[:space:]]*[=:][[:space:]]*[^[:space:]]'

# refuse_credentials DIR: the folder goes into the image, which anyone who can run it reads:
# no key or credentials file by its name, no secret by its content (named by file and line, the
# value never printed).
refuse_credentials() {
    local dir=$1 hit
    hit=$(find "$dir" \( -iname credentials -o -iname '*.pem' -o -iname '*.key' -o -iname '*.p12' \
        -o -iname '*.pfx' -o -name 'id_rsa*' -o -name 'id_ecdsa*' -o -name 'id_ed25519*' \
        -o -name .netrc -o -name .pgpass \) -print -quit)
    [ -z "$hit" ] || die "--config-dir: $hit is a credentials or key file by its name; keep it out of the image (remove it from $dir) and give it to the stack as a secret (docs/operations.md)"
    hit=$(grep -rnIE -m1 "$credential_pattern" "$dir" | head -1 | cut -d: -f1,2) || true
    [ -z "$hit" ] || die "--config-dir: $hit holds a secret (a key, a password or a token); keep it out of the image (remove it from $dir) and give it to the stack as a secret (docs/operations.md)"
}

if [ -n "$config_dir" ]; then
    [ -d "$config_dir" ] || die "--config-dir $config_dir is not a folder"
    case "$(cd "$config_dir" && pwd)" in
        "$HOME/.config"|"$HOME") die "--config-dir: give the one tool's folder, not $config_dir" ;;
    esac
    refuse_credentials "$config_dir"
fi

compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose "$@"
    elif command -v docker-compose >/dev/null 2>&1; then
        docker-compose "$@"
    else
        die "neither 'docker compose' nor 'docker-compose' is installed"
    fi
}
if [ "$build_only" -eq 1 ]; then
    build_prepared
    exit 0
fi

# resolve_requirements OUT: requirements/base.lock and the --requirements files resolved together
# by uv into pinned requirements; a conflict, direct or through dependencies, stops the build
# with uv's explanation. Without --requirements, OUT is base.lock itself.
resolve_requirements() {
    local out=$1 base=$repo/requirements/base.lock why files
    if [ ${#extra_reqs[@]} -eq 0 ]; then
        cp "$base" "$out"
        return 0
    fi
    # COLUMNS: uv's explanation unwrapped, one line per cause.
    if why=$(COLUMNS=1000 "$venv/bin/uv" pip compile --quiet --python-version 3.11 \
        --custom-compile-command "bdrc-docker.sh (requirements/base.lock + --requirements files)" \
        "$base" "${extra_reqs[@]}" -o "$out.new" 2>&1); then
        mv -f "$out.new" "$out"
        return 0
    fi
    rm -f "$out.new"
    files="requirements/base.lock and $(printf '%s, ' "${extra_reqs[@]}")"
    files=${files%, }
    case "$why" in
        *"No solution found"*)
            echo "bdrc-docker.sh: requirements do not resolve: $files ask for versions that cannot go together; make them agree (uv's explanation below)" >&2 ;;
        *"parse requirement"*)
            echo "bdrc-docker.sh: --requirements: a line is not a requirement (one 'name[extras] specifier' a line); uv names the file below" >&2 ;;
        *)
            echo "bdrc-docker.sh: uv pip compile failed on $files (uv's message below)" >&2 ;;
    esac
    printf '%s\n' "$why" >&2
    exit 1
}

venv=$(bash "$repo/scripts/ensure-venv.sh")
if [ "$rebuild" -eq 1 ] && [ -d "$build_dir" ]; then
    say "wiping $build_dir"
    rm -rf "$build_dir"
fi
mkdir -p "$build_dir"
build_dir=$(cd "$build_dir" && pwd)
export COMPOSE_BUILD_DIR=$build_dir

say "resolving requirements (requirements/base.lock${extra_reqs[*]:+ and --requirements})"
resolve_requirements "$build_dir/$PY_REQS"

say "building the wheelhouse in $build_dir/wheels"
mkdir -p "$build_dir/wheels"
"$venv/bin/python" -m pip wheel -q --disable-pip-version-check -r "$build_dir/$PY_REQS" \
    -w "$build_dir/wheels" 2> >(grep -v "is ignored: it is neither" >&2)
say "building the pipeline's own wheel (the glacier_sync library and its Airflow glue)"
rm -f "$build_dir/wheels"/glacier_sync-*.whl
# From a copy of the sources: setuptools writes build/ and *.egg-info where it builds, and two
# builds at once in the checkout (two test runs, or a test run and a build) would clobber each other.
rm -rf "$build_dir/source"
mkdir -p "$build_dir/source"
cp -a "$repo/pyproject.toml" "$repo/src" "$build_dir/source/"
find "$build_dir/source/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
"$venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps "$build_dir/source" \
    -w "$build_dir/wheels" 2> >(grep -v "is ignored: it is neither" >&2)
rm -rf "$build_dir/source"

say "copying DAGs, scripts and config"
rm -rf "$build_dir/dags" "$build_dir/sync-scripts" "$build_dir/config" "$build_dir/docker"
mkdir -p "$build_dir/docker" "$build_dir/config"
(cd "$repo" && tar --exclude=__pycache__ -cf - dags) | tar -C "$build_dir" -xf -
cp -a "$sync_scripts" "$build_dir/sync-scripts"
default_sync=$repo/src/glacier_sync/sync_scripts/syncOneWork.sh
[ -f "$build_dir/sync-scripts/syncOneWork.sh" ] || cp "$default_sync" "$build_dir/sync-scripts/"
if [ -n "$config_dir" ]; then cp -a "$config_dir/." "$build_dir/config/"; fi
cp "$repo/docker/entrypoint.sh" "$repo/docker/healthcheck.py" "$build_dir/docker/"
cp "$repo/Dockerfile-bdrc" "$repo/bdrc-docker-compose.yml" "$build_dir/"

cat > "$build_dir/build.env" <<ENV
COMPOSE_BUILD_DIR=$build_dir
BASE_IMAGE=$BASE_IMAGE
BDRC_IMAGE=$BDRC_IMAGE
SYNC_SCRIPTS_HOME=$SYNC_SCRIPTS_HOME
PY_REQS=$PY_REQS
CONFIG_ROOT=$CONFIG_ROOT
ENV
if [ "$prepare_only" -eq 1 ]; then
    say "prepared $build_dir (variables in $build_dir/build.env)"
    exit 0
fi
say "building $BDRC_IMAGE from $BASE_IMAGE"
compose -p bdrc-build -f "$build_dir/bdrc-docker-compose.yml" build airflow-init
say "built $BDRC_IMAGE; next: ./deploy.sh --dest DIR --env dev|prod"
