#!/usr/bin/env bash
# deploy.sh user|backup|restore - operate a deployed instance (called through deploy.sh).
#
# Usage: ./deploy.sh user --dest DIR list
#        ./deploy.sh user --dest DIR add NAME --role Admin|Op|User|Viewer [--email ADDRESS]
#        ./deploy.sh user --dest DIR set-role NAME ROLE
#        ./deploy.sh user --dest DIR set-password NAME
#        ./deploy.sh user --dest DIR remove NAME
#            Users of the UI (instances deployed with --auth fab; the stack must be up). A
#            password is asked twice on a terminal, or read from the first line of stdin.
#        ./deploy.sh backup --dest DIR [--out FILE]
#            Both databases (Airflow's metadata and the progress database, when it is on the
#            stack's PostgreSQL) and the fernet key that opens the metadata's secrets, into one
#            tar file of mode 0600 (default DIR/backups/<project>-<UTC time>.tar). The stack's
#            postgres service must be up; the rest may run.
#        ./deploy.sh restore --dest DIR --from FILE [--yes]
#            Replace this instance's databases with a backup's (a new instance deployed with
#            deploy.sh, or this one). Stops the Airflow services, restores, installs the
#            backup's fernet key (the old one kept as secrets/airflow_fernet_key.before-restore)
#            and starts the stack again. --yes is required when the databases hold runs or works.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command=$1
shift
dest="" out="" from="" yes=0 args=() tmp=""

usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
die() { echo "deploy.sh $command: $*" >&2; exit 2; }
fail() { echo "deploy.sh $command: $*" >&2; exit 1; }
say() { echo "==> $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dest) dest=${2:?--dest needs a folder}; shift 2 ;;
        --out) out=${2:?--out needs a file}; shift 2 ;;
        --from) from=${2:?--from needs a file}; shift 2 ;;
        --yes) yes=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
[ -n "$dest" ] || die "--dest DIR is required (the instance folder deploy.sh made)"
[ -f "$dest/.env" ] && [ -f "$dest/docker-compose.yaml" ] \
    || die "$dest is not an instance made by deploy.sh (no .env or docker-compose.yaml)"
dest=$(cd "$dest" && pwd)

env_value() { sed -n "s/^$1=//p" "$dest/.env" | tail -n 1; }
project=$(env_value COMPOSE_PROJECT_NAME)

# compose ARG...: Compose in the instance folder (its .env names the project).
compose() {
    if docker compose version >/dev/null 2>&1; then
        (cd "$dest" && docker compose "$@")
    elif command -v docker-compose >/dev/null 2>&1; then
        (cd "$dest" && docker-compose "$@")
    else
        fail "neither 'docker compose' nor 'docker-compose' is installed"
    fi
}
# running SERVICE: the service's container runs.
running() {
    local id
    id=$(compose ps -q "$1" 2>/dev/null) && [ -n "$id" ] \
        && [ "$(docker inspect -f '{{.State.Running}}' "$id" 2>/dev/null)" = true ]
}
# psql_in DB SQL: one value from the stack's PostgreSQL.
psql_in() { compose exec -T postgres psql -U airflow -d "$1" -tAc "$2"; }
# progress_db: the progress database's name when it lives on the stack's PostgreSQL.
progress_db() {
    local url
    url=$(cat "$dest/secrets/progress_db_url")
    case "$url" in
        postgresql*://*@postgres:5432/*) url=${url##*/}; echo "${url%%\?*}" ;;
    esac
}

# ---- user -------------------------------------------------------------------------------------
read_new_password() {
    local first second
    if [ -t 0 ]; then
        read -r -s -p "Password: " first; echo >&2
        read -r -s -p "Again: " second; echo >&2
        [ "$first" = "$second" ] || die "the two passwords differ; nothing changed"
        printf '%s\n' "$first"
    else
        head -n 1
    fi
}

cmd_user() {
    [ ${#args[@]} -gt 0 ] || { usage >&2; die "give a user command: list, add, set-role, set-password, remove"; }
    [ "$(env_value AIRFLOW_AUTH)" = fab ] \
        || die "this instance signs in with one admin (--auth simple); re-deploy it with --auth fab for users and roles"
    running airflow-apiserver || fail "the stack's airflow-apiserver is not running: cd $dest && docker compose up -d"
    # Airflow's start-up chatter off: the answer (or the one-line error) is what remains.
    local run=(compose exec -T -e AIRFLOW__LOGGING__LOGGING_LEVEL=ERROR -e PYTHONWARNINGS=ignore
               airflow-apiserver python -m glacier_sync_airflow.ui_users "${args[@]}")
    case "${args[0]}" in
        add|set-password) read_new_password | "${run[@]}" ;;
        *) "${run[@]}" < /dev/null ;;
    esac
}

# ---- backup -----------------------------------------------------------------------------------
cmd_backup() {
    running postgres || fail "the stack's postgres is not running: cd $dest && docker compose up -d postgres"
    local stamp progress
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    out=${out:-$dest/backups/$project-$stamp.tar}
    mkdir -p "$(dirname "$out")"
    tmp=$(mktemp -d "$(dirname "$out")/.backup.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    say "dumping the metadata database (airflow)"
    compose exec -T postgres pg_dump -U airflow -Fc -d airflow > "$tmp/airflow.pgdump"
    progress=$(progress_db)
    if [ -n "$progress" ]; then
        say "dumping the progress database ($progress)"
        compose exec -T postgres pg_dump -U airflow -Fc -d "$progress" > "$tmp/progress.pgdump"
    else
        echo "deploy.sh backup: warning: the progress database is not on the stack's PostgreSQL (secrets/progress_db_url); back it up with its own tools" >&2
    fi
    (umask 077
     cp "$dest/secrets/airflow_fernet_key" "$tmp/airflow_fernet_key"
     cat > "$tmp/manifest.txt" <<MANIFEST
project=$project
made=$stamp
image=$(env_value BDRC_IMAGE)
progress_database=${progress}
MANIFEST
     tar -C "$tmp" -cf "$out.partial" . && mv -f "$out.partial" "$out")
    say "backup written: $out (mode 0600; it holds the fernet key: keep it like a secret)"
}

# ---- restore ----------------------------------------------------------------------------------
wait_postgres() {
    for _ in $(seq 60); do
        compose exec -T postgres pg_isready -U airflow -q >/dev/null 2>&1 && return 0
        sleep 2
    done
    fail "the stack's postgres did not become ready"
}

# holds_data: the instance's databases hold runs or works (restoring would replace them).
holds_data() {
    local runs works progress
    runs=$(psql_in airflow "SELECT count(*) FROM dag_run" 2>/dev/null || echo 0)
    progress=$(progress_db)
    works=0
    if [ -n "$progress" ]; then
        works=$(psql_in "$progress" "SELECT count(*) FROM glacier_sync_progress" 2>/dev/null || echo 0)
    fi
    [ "${runs:-0}" != 0 ] || [ "${works:-0}" != 0 ]
}

# restore_db NAME DUMP: drop and re-create database NAME from the custom-format DUMP.
restore_db() {
    say "restoring database $1"
    psql_in postgres "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null
    psql_in postgres "CREATE DATABASE \"$1\" OWNER airflow" >/dev/null
    compose exec -T postgres pg_restore -U airflow -d "$1" --no-owner --exit-on-error < "$2"
}

cmd_restore() {
    [ -n "$from" ] || die "--from FILE is required (a tar file made by deploy.sh backup)"
    [ -f "$from" ] || die "--from $from does not exist"
    local progress services
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    tar -C "$tmp" -xf "$from" 2>/dev/null && [ -s "$tmp/airflow.pgdump" ] && [ -s "$tmp/manifest.txt" ] \
        || die "--from $from is not a backup made by deploy.sh backup"
    progress=$(progress_db)
    if [ -s "$tmp/progress.pgdump" ] && [ -z "$progress" ]; then
        die "the backup holds a progress database but this instance's (secrets/progress_db_url) is not on its PostgreSQL; restore it there by hand with pg_restore"
    fi
    compose up -d postgres >/dev/null 2>&1 || fail "cannot start the stack's postgres (docker compose up -d postgres)"
    wait_postgres
    if holds_data && [ "$yes" -eq 0 ]; then
        die "this instance's databases hold runs or works; re-run with --yes to replace them with the backup's"
    fi
    services=$(compose config --services | grep '^airflow-' || true)
    say "stopping the Airflow services"
    # shellcheck disable=SC2086  # one word per service
    compose stop $services >/dev/null 2>&1 || true
    restore_db airflow "$tmp/airflow.pgdump"
    if [ -s "$tmp/progress.pgdump" ]; then restore_db "$progress" "$tmp/progress.pgdump"; fi
    if ! cmp -s "$tmp/airflow_fernet_key" "$dest/secrets/airflow_fernet_key"; then
        cp -p "$dest/secrets/airflow_fernet_key" "$dest/secrets/airflow_fernet_key.before-restore"
        cat "$tmp/airflow_fernet_key" > "$dest/secrets/airflow_fernet_key"
        say "secrets/airflow_fernet_key: the backup's (the old one in airflow_fernet_key.before-restore)"
    fi
    say "starting the stack (airflow-init migrates a backup from an older version)"
    compose up -d >/dev/null
    say "restored $(sed -n 's/^made=//p' "$tmp/manifest.txt") backup of $(sed -n 's/^project=//p' "$tmp/manifest.txt") into $project"
}

case "$command" in
    user) cmd_user ;;
    backup) cmd_backup ;;
    restore) cmd_restore ;;
esac
