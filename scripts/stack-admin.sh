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
#        ./deploy.sh restore --dest DIR --from FILE [--yes] [--no-start]
#            Replace this instance's databases with a backup's (a new instance deployed with
#            deploy.sh, or this one). Checks the dumps, backs the instance up first when it
#            holds runs or works (that needs --yes), stops the Airflow services, restores each
#            database beside the old one and swaps them, installs the backup's fernet key (the
#            old one kept as secrets/airflow_fernet_key.before-restore) and starts the stack
#            again (--no-start: leave it stopped, e.g. to deploy an older image first).
set -euo pipefail

command=$1
shift
dest="" out="" from="" yes=0 start=1 args=() tmp="" safety="" step=""

me="deploy.sh $command"
# shellcheck source=scripts/shell-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/shell-common.sh"   # usage, say, die, fail, need_value

while [ $# -gt 0 ]; do
    case "$1" in
        --dest) need_value "$@"; dest=$2; shift 2 ;;
        --out) need_value "$@"; out=$2; shift 2 ;;
        --from) need_value "$@"; from=$2; shift 2 ;;
        --yes) yes=1; shift ;;
        --no-start) start=0; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) [ "$command" = user ] || die "unknown option $1 (see -h)"; args+=("$1"); shift ;;
        *) [ "$command" = user ] || die "unexpected argument $1 (see -h)"; args+=("$1"); shift ;;
    esac
done
[ -n "$dest" ] || die "--dest DIR is required (the instance folder deploy.sh made)"
[ -f "$dest/.env" ] && [ -f "$dest/docker-compose.yaml" ] \
    || die "$dest is not an instance made by deploy.sh (no .env or docker-compose.yaml)"
dest=$(cd "$dest" && pwd)
[ "$command" = user ] || [ -r "$dest/secrets/airflow_fernet_key" ] \
    || die "cannot read $dest/secrets: run it as root (sudo) or as the sync user"
# shellcheck source=scripts/instance-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/instance-common.sh"   # need_docker, env_value, compose, running
project=$(env_value COMPOSE_PROJECT_NAME)

# psql_in DB SQL: one value from the stack's PostgreSQL.
psql_in() { compose exec -T postgres psql -U airflow -d "$1" -v ON_ERROR_STOP=1 -tAc "$2"; }
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
        IFS= read -r -s -p "Password: " first; echo >&2
        IFS= read -r -s -p "Again: " second; echo >&2
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
    need_docker
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
# backup_to FILE: both databases and the fernet key into FILE (a tar of mode 0600).
backup_to() {
    local file=$1 work progress stamp
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$(dirname "$file")"
    work=$(mktemp -d "$(dirname "$file")/.backup.XXXXXX")
    say "dumping the metadata database (airflow)"
    compose exec -T postgres pg_dump -U airflow -Fc -d airflow > "$work/airflow.pgdump" \
        || { rm -rf "$work"; fail "pg_dump of the metadata database failed (see above); no backup written"; }
    progress=$(progress_db)
    if [ -n "$progress" ]; then
        say "dumping the progress database ($progress)"
        compose exec -T postgres pg_dump -U airflow -Fc -d "$progress" > "$work/progress.pgdump" \
            || { rm -rf "$work"; fail "pg_dump of the progress database failed (see above); no backup written"; }
    else
        echo "deploy.sh backup: warning: the progress database is not on the stack's PostgreSQL (secrets/progress_db_url); back it up with its own tools" >&2
    fi
    (umask 077
     cp "$dest/secrets/airflow_fernet_key" "$work/airflow_fernet_key"
     printf 'project=%s\nmade=%s\nimage=%s\nprogress_database=%s\n' \
         "$project" "$stamp" "$(env_value BDRC_IMAGE)" "$progress" > "$work/manifest.txt"
     tar -C "$work" -cf "$file.partial" . && mv -f "$file.partial" "$file") \
        || { rm -rf "$work" "$file.partial"; fail "cannot write $file"; }
    rm -rf "$work"
}

cmd_backup() {
    need_docker
    running postgres || fail "the stack's postgres is not running: cd $dest && docker compose up -d postgres"
    out=${out:-$dest/backups/$project-$(date -u +%Y%m%dT%H%M%SZ).tar}
    backup_to "$out"
    say "backup written: $out (mode 0600; it holds the fernet key: keep it like a secret)"
}

# ---- restore ----------------------------------------------------------------------------------
# wait_postgres: the real server answers on TCP (an image's first-start init server does not).
wait_postgres() {
    for _ in $(seq 90); do
        compose exec -T postgres pg_isready -h 127.0.0.1 -U airflow -q >/dev/null 2>&1 && return 0
        sleep 2
    done
    fail "the stack's postgres did not become ready"
}

# holds_data: the instance's databases hold runs or works (a count that fails counts as yes).
holds_data() {
    local runs works=0 progress
    runs=$(psql_in airflow "SELECT count(*) FROM dag_run" 2>/dev/null) || runs=unknown
    [ "$runs" = unknown ] && [ -z "$(psql_in postgres "SELECT 1 FROM pg_database WHERE datname = 'airflow'" 2>/dev/null)" ] && runs=0
    progress=$(progress_db)
    if [ -n "$progress" ] && [ -n "$(psql_in postgres "SELECT 1 FROM pg_database WHERE datname = '$progress'")" ]; then
        works=$(psql_in "$progress" "SELECT count(*) FROM glacier_sync_progress" 2>/dev/null) || works=0
    fi
    [ "$runs" != 0 ] || [ "$works" != 0 ]
}

# restore_db NAME DUMP: restore beside NAME (NAME_restoring), then swap it in.
restore_db() {
    local name=$1 dump=$2
    step="restoring database $name"
    say "$step"
    psql_in postgres "DROP DATABASE IF EXISTS \"${name}_restoring\"" >/dev/null
    psql_in postgres "CREATE DATABASE \"${name}_restoring\" OWNER airflow" >/dev/null
    compose exec -T postgres pg_restore -U airflow -d "${name}_restoring" --no-owner --exit-on-error < "$dump"
    step="swapping the restored database $name in"
    psql_in postgres "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null
    psql_in postgres "ALTER DATABASE \"${name}_restoring\" RENAME TO \"$name\"" >/dev/null
}

# on_restore_error: say where the instance stands and the way back.
on_restore_error() {
    echo "deploy.sh restore: failed while $step. The Airflow services are stopped." >&2
    if [ -n "$safety" ]; then
        echo "deploy.sh restore: the instance's databases as they were: $safety; put them back with: ./deploy.sh restore --dest $dest --from $safety --yes" >&2
    else
        echo "deploy.sh restore: the instance held no runs or works; fix the cause and restore again, or start it empty: cd $dest && docker compose up -d" >&2
    fi
}

cmd_restore() {
    [ -n "$from" ] || die "--from FILE is required (a tar file made by deploy.sh backup)"
    refuse_under_rotation "$dest"   # a restore installs secrets too
    [ -f "$from" ] || die "--from $from does not exist"
    local progress stopped
    tmp=$(mktemp -d "$dest/.restore.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    tar -C "$tmp" -xf "$from" 2>/dev/null && [ -s "$tmp/airflow.pgdump" ] && [ -s "$tmp/manifest.txt" ] \
        || die "--from $from is not a backup made by deploy.sh backup"
    progress=$(progress_db)
    if [ -s "$tmp/progress.pgdump" ] && [ -z "$progress" ]; then
        die "the backup holds a progress database but this instance's (secrets/progress_db_url) is not on its PostgreSQL; restore it there by hand with pg_restore"
    fi
    need_docker
    compose up -d postgres >/dev/null 2>&1 || fail "cannot start the stack's postgres (docker compose up -d postgres)"
    wait_postgres
    for dump in "$tmp"/*.pgdump; do
        compose exec -T postgres pg_restore --list < "$dump" >/dev/null 2>&1 \
            || die "$(basename "$dump") in $from cannot be read by this instance's PostgreSQL (a damaged file, or made by a newer PostgreSQL than POSTGRES_IMAGE)"
    done
    if holds_data; then
        [ "$yes" -eq 1 ] || die "this instance's databases hold runs or works; re-run with --yes to replace them with the backup's (they are backed up first)"
        safety=$dest/backups/$project-before-restore-$(date -u +%Y%m%dT%H%M%SZ).tar
        step="backing up the instance first"
        backup_to "$safety"
        say "the instance's own databases are in $safety"
    fi
    set -o errtrace   # the ERR trap also fires inside the functions below
    trap 'on_restore_error' ERR
    step="stopping the Airflow services"
    say "$step"
    stopped=$(docker ps -q --filter "label=com.docker.compose.project=$project" \
        | while read -r id; do
            case "$(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}' "$id")" in
                airflow-*|flower) echo "$id" ;;
            esac
        done)
    if [ -n "$stopped" ]; then
        # shellcheck disable=SC2086  # one word per container id
        docker stop $stopped >/dev/null
    fi
    restore_db airflow "$tmp/airflow.pgdump"
    if [ -s "$tmp/progress.pgdump" ]; then restore_db "$progress" "$tmp/progress.pgdump"; fi
    step="installing the backup's fernet key"
    if ! cmp -s "$tmp/airflow_fernet_key" "$dest/secrets/airflow_fernet_key"; then
        cp -p "$dest/secrets/airflow_fernet_key" "$dest/secrets/airflow_fernet_key.before-restore"
        cat "$tmp/airflow_fernet_key" > "$dest/secrets/airflow_fernet_key"
        say "secrets/airflow_fernet_key: the backup's (the old one in airflow_fernet_key.before-restore)"
    fi
    trap - ERR
    say "restored $(sed -n 's/^made=//p' "$tmp/manifest.txt") backup of $(sed -n 's/^project=//p' "$tmp/manifest.txt") into $project"
    if [ "$start" -eq 0 ]; then
        say "the Airflow services stay stopped (--no-start): cd $dest && docker compose up -d"
        return 0
    fi
    say "starting the stack (airflow-init migrates a backup from an older version)"
    compose up -d >/dev/null
    if [ -n "$stopped" ]; then
        # shellcheck disable=SC2086  # services outside the default profile (Celery workers)
        docker start $stopped >/dev/null
    fi
}

case "$command" in
    user) cmd_user ;;
    backup) cmd_backup ;;
    restore) cmd_restore ;;
esac
