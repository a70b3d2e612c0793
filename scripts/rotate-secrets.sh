#!/usr/bin/env bash
# deploy.sh rotate - replace secrets of a running instance, restarting exactly what reads them.
# Usage: ./deploy.sh rotate --dest DIR SECRET... [--aws-credentials FILE]
#   SECRET is one or more of:
#     fernet          a new Airflow fernet key first in secrets/airflow_fernet_key, the old ones
#                     kept after it (they still decrypt), then `airflow rotate-fernet-key`
#                     re-encrypts the connections and variables with the new one
#     jwt             secrets/airflow_jwt_secret (the task and API tokens' signature)
#     api-secret      secrets/airflow_api_secret_key
#     admin-password  secrets/airflow_admin_password, and the admin's password in the UI
#                     (AIRFLOW_ADMIN_USER; --auth fab: the user's password is set too)
#     postgres        the stack's PostgreSQL password (ALTER ROLE), and the URLs built from it
#     redis           the Celery broker's password (--executor celery)
#     flower          Flower's password (--flower on)
#     aws             the AWS credentials, from --aws-credentials FILE (an INI like ~/.aws/credentials)
#     all             every one above that the instance has, but aws
#   New values are generated, staged in secrets/.rotating/ first and installed into the files the
#   containers read; then the services that read them are recreated (the Airflow services, Redis
#   and Flower as each secret needs) and waited for until healthy. An interrupted rotation is
#   finished by running the same command again. The stack must be up. Nothing secret is printed.
set -euo pipefail

me="deploy.sh rotate"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/shell-common.sh
source "$repo/scripts/shell-common.sh"   # usage, say, die, fail, need_value
# shellcheck source=scripts/instance-common.sh
source "$repo/scripts/instance-common.sh"   # need_docker, env_value, compose, running (of $dest)

KNOWN=("${ROTATABLE_SECRETS[@]}")
dest="" aws_from="" wanted=() every=0
healthy_timeout=${ROTATE_HEALTHY_TIMEOUT:-420}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --dest) need_value "$@"; dest=$2; shift 2 ;;
            --aws-credentials) need_value "$@"; aws_from=$2; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            -*) die "unknown option $1 (see -h)" ;;
            all) every=1; shift ;;
            *) known "$1" || die "unknown secret '$1'; give one or more of: ${KNOWN[*]}, all"
               wanted+=("$1"); shift ;;
        esac
    done
    [ -n "$dest" ] || die "--dest DIR is required (the instance folder deploy.sh made)"
    [ ${#wanted[@]} -gt 0 ] || [ "$every" -eq 1 ] \
        || die "name the secrets to rotate: ${KNOWN[*]}, or all (see -h)"
    [ -f "$dest/.env" ] && [ -f "$dest/docker-compose.yaml" ] \
        || die "$dest is not an instance made by deploy.sh (no .env or docker-compose.yaml)"
    if [ "$every" -eq 1 ]; then  # every secret this instance has, but aws
        wanted+=(fernet jwt api-secret admin-password postgres)
        if enabled redis; then wanted+=(redis); fi
        if enabled airflow-flower; then wanted+=(flower); fi
    fi
    local name in_order=()  # once each, in the order of KNOWN
    for name in "${KNOWN[@]}"; do if wants "$name"; then in_order+=("$name"); fi; done
    wanted=("${in_order[@]}")
    dest=$(cd "$dest" && pwd)
    secrets=$dest/secrets
    staged=$secrets/.rotating
    [ -r "$secrets/airflow_fernet_key" ] && [ -w "$secrets" ] \
        || die "cannot write $secrets: run it as root (sudo) or as the sync user"
    if wants aws && [ -z "$aws_from" ] && [ -s "$staged/aws" ]; then
        :  # finishing an interrupted rotation: the credentials staged then
    elif wants aws; then
        [ -n "$aws_from" ] || die "aws needs --aws-credentials FILE (the new credentials INI)"
        [ -s "$aws_from" ] && [ -r "$aws_from" ] || die "--aws-credentials $aws_from is not a readable, non-empty file"
        local why
        why=$(tool check-aws-credentials "$aws_from" "$dest/config/glacier-sync.toml" 2>&1) || die "$why"
    elif [ -n "$aws_from" ]; then
        die "--aws-credentials is for the aws secret: add aws to the secrets to rotate"
    fi
    if wants postgres; then
        for name in airflow_db_url progress_db_url; do
            # A URL of the stack's PostgreSQL must be in the form the rotation rewrites.
            if grep -qE '@postgres[:/]' "$secrets/$name" \
                    && ! grep -qE '^postgresql[^:]*://airflow:[^@]*@postgres:5432/' "$secrets/$name"; then
                die "secrets/$name names the stack's PostgreSQL in a form rotate does not rewrite (postgresql+psycopg2://airflow:PASSWORD@postgres:5432/DB): write it in that form first"
            fi
        done
    fi
    if wants redis && ! enabled redis; then
        die "this instance has no Celery broker (deployed without --executor celery): drop redis"
    fi
    if wants flower && ! enabled airflow-flower; then
        die "this instance has no Flower (deployed without --flower on): drop flower"
    fi
    local unfinished=()
    for name in $(unfinished_rotations "$dest"); do
        if ! wants "$name"; then unfinished+=("$name"); fi
    done
    if [ ${#unfinished[@]} -gt 0 ]; then
        die "a rotation of ${unfinished[*]} was interrupted: finish it first with ./deploy.sh rotate --dest $dest ${unfinished[*]}"
    fi
}

known() { local k; for k in "${KNOWN[@]}"; do [ "$k" = "$1" ] && return 0; done; return 1; }
wants() { local w; for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }
# enabled SERVICE: the service is part of this instance (its Compose profile, in .env, is on).
enabled() {
    local profiles
    profiles=",$(env_value COMPOSE_PROFILES),"
    case "$1" in
        redis|airflow-worker) [[ $profiles == *,celery,* ]] ;;
        airflow-flower) [[ $profiles == *,flower,* ]] ;;
        *) return 0 ;;
    esac
}

check_stack() {
    need_docker
    running postgres || fail "the stack's postgres is not running: cd $dest && docker compose up -d postgres, then rotate"
}

# ---- stage: every file's new content written beside the secrets before any is changed --------
tool() { PYTHONPATH="$repo/src" PYTHONDONTWRITEBYTECODE=1 python3 -m deploytools "$@"; }

sync_file() { python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.close(fd)' "$1"; }

# targets NAME: the files of secrets/ that a secret's rotation replaces.
targets() {
    case "$1" in
        fernet) echo airflow_fernet_key ;;
        jwt) echo airflow_jwt_secret ;;
        api-secret) echo airflow_api_secret_key ;;
        admin-password) echo airflow_admin_password ;;
        postgres) echo postgres_password airflow_db_url progress_db_url ;;
        redis) echo redis_password redis_conf ;;
        flower) echo flower_password ;;
        aws) echo aws ;;
    esac
}

# new_content NAME TARGET: TARGET's content once NAME is rotated (from the staged value and,
# for the fernet keys and the URLs, the file as it is: read before anything is installed).
new_content() {
    local value=$staged/$1.part
    case "$2" in
        airflow_fernet_key) printf '%s,' "$(cat "$value")"; cat "$secrets/$2" ;;
        airflow_db_url|progress_db_url)
            # Only a URL of the stack's own PostgreSQL changes (a progress database elsewhere
            # is not ours); the password never goes on a command line.
            python3 -c 'import re, sys
new = open(sys.argv[1]).read()
url = open(sys.argv[2]).read()
sys.stdout.write(re.sub(r"^(postgresql[^:]*://airflow:)[^@]*(@postgres:5432/)",
                        lambda m: m.group(1) + new + m.group(2), url))' "$value" "$secrets/$2" ;;
        redis_conf) printf 'requirepass %s\nsave ""\nappendonly no\n' "$(cat "$value")" ;;
        *) cat "$value" ;;
    esac
}

# stage: for each secret, its new value and the whole new content of each of its files, in
# secrets/.rotating/ (0700); a secret is staged once its value is renamed from NAME.part to NAME
# (after its files). A
# re-run finds it and installs the same contents again, whatever an interruption left.
stage() {
    local name target
    rm -rf "$secrets"/.rotated.*   # a finished rotation killed while it was being removed
    (umask 077; mkdir -p "$staged/files")
    for name in "${wanted[@]}"; do
        if [ -s "$staged/$name" ]; then
            say "$name: finishing the interrupted rotation (its staged value)"
            continue
        fi
        (umask 077
         case "$name" in
             fernet) tool fernet-key | tr -d '\n' ;;   # no newline: read by *_CMD as is
             aws) cat "$aws_from" ;;
             *) tool secret | tr -d '\n' ;;
         esac > "$staged/$name.part"
         for target in $(targets "$name"); do
             new_content "$name" "$target" > "$staged/files/$target"
             sync_file "$staged/files/$target"
         done)
        sync_file "$staged/$name.part"
        sync_file "$staged/files"
        mv -f "$staged/$name.part" "$staged/$name"
    done
    sync_file "$staged"
}

# ---- install -----------------------------------------------------------------------------------
# put TARGET: the staged content copied into secrets/TARGET in place (a running container's
# secret is a bind mount of this very file: a new file renamed over it would not be seen).
put() {
    [ -f "$staged/files/$1" ] \
        || fail "secrets/.rotating/files/$1 is missing (a damaged staging folder); secrets/$1 is unchanged: move secrets/.rotating away and rotate again"
    cat "$staged/files/$1" > "$secrets/$1"
    sync_file "$secrets/$1"
}

# kill_point NAME: a test hook (BDRC_ROTATE_KILL_AT=NAME): the rotation killed there with -9.
kill_point() { if [ "${BDRC_ROTATE_KILL_AT:-}" = "$1" ]; then kill -9 $$; fi; }

alter_postgres_password() {
    # Through stdin, never a command line; the server logs no statement of this session, not even
    # a failing one (it would hold the password).
    { echo "SET log_min_error_statement = panic;"
      echo "SET log_statement = 'none';"
      printf "ALTER ROLE airflow WITH PASSWORD '%s';\n" "$(cat "$staged/postgres")"
    } | compose exec -T postgres psql -U airflow -d airflow -v ON_ERROR_STOP=1 -q -f - >/dev/null 2>&1 \
        || fail "PostgreSQL refused the new password (ALTER ROLE airflow; see docker compose logs postgres); no secret file changed: run the same command again"
    kill_point postgres:altered
}

install() {
    local name target
    # The server first, before any file: until the files follow, running services keep their
    # connections, and a refusal leaves every secret file as it was.
    if wants postgres; then alter_postgres_password; fi
    for name in "${wanted[@]}"; do
        for target in $(targets "$name"); do put "$target"; done
        say "secrets: $name replaced"
    done
    kill_point installed
}

# ---- restart -----------------------------------------------------------------------------------
# readers: the services that read the secrets being rotated (only those of this instance).
readers() {
    local airflow=(airflow-apiserver airflow-scheduler airflow-dag-processor airflow-triggerer
                   airflow-worker)
    local name services=()
    for name in "${wanted[@]}"; do
        case "$name" in
            fernet|jwt|api-secret|aws) services+=("${airflow[@]}") ;;
            postgres) services+=("${airflow[@]}" airflow-flower) ;;  # Flower: the result backend
            admin-password) [ "$(env_value AIRFLOW_AUTH)" = fab ] || services+=(airflow-apiserver) ;;
            redis) services+=(redis airflow-scheduler airflow-worker airflow-flower) ;;
            flower) services+=(airflow-flower) ;;
        esac
    done
    local service
    for service in $(printf '%s\n' "${services[@]}" | sort -u); do
        if enabled "$service"; then echo "$service"; fi
    done
}

# wait_healthy SERVICE...: every container of the services healthy (or running, without a check).
wait_healthy() {
    local deadline=$((SECONDS + healthy_timeout)) service id state waiting
    while true; do
        waiting=()
        for service in "$@"; do
            for id in $(compose ps -q "$service" 2>/dev/null); do
                state=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null) \
                    || state=gone
                case "$state" in healthy|running) ;; *) waiting+=("$service:$state") ;; esac
            done
        done
        [ ${#waiting[@]} -gt 0 ] || return 0
        [ "$SECONDS" -lt "$deadline" ] \
            || fail "not healthy within ${healthy_timeout} s after the rotation: ${waiting[*]} (cd $dest && docker compose ps; docker compose logs SERVICE); the new secrets are installed, run the same command again once fixed"
        sleep 3
    done
}

restart_readers() {
    local services
    mapfile -t services < <(readers)
    [ ${#services[@]} -gt 0 ] || return 0
    say "recreating ${services[*]}"
    compose up -d --no-deps --force-recreate "${services[@]}" >/dev/null 2>&1 \
        || fail "docker compose could not recreate ${services[*]} (cd $dest && docker compose up -d); the new secrets are installed, run the same command again once fixed"
    wait_healthy "${services[@]}"
}

# ---- after the restart -------------------------------------------------------------------------
reencrypt() {
    compose exec -T airflow-scheduler airflow rotate-fernet-key >/dev/null 2>&1 \
        || fail "airflow rotate-fernet-key failed in airflow-scheduler (the old key still decrypts); run the same command again"
    say "fernet: connections and variables re-encrypted with the new key (the old keys still decrypt)"
}

set_fab_admin_password() {
    local admin
    admin=$(env_value AIRFLOW_ADMIN_USER)
    local how=(exec -T)
    running airflow-apiserver || how=(run --rm --no-deps -T)
    compose "${how[@]}" -e AIRFLOW__LOGGING__LOGGING_LEVEL=ERROR -e PYTHONWARNINGS=ignore \
        airflow-apiserver python -m glacier_sync_airflow.ui_users set-password "${admin:-admin}" \
        < "$staged/admin-password" >/dev/null \
        || fail "the UI user ${admin:-admin} kept its password (ui_users set-password failed); run the same command again"
    say "admin-password: set for the UI user ${admin:-admin}"
}

finish() {
    if wants fernet; then reencrypt; fi
    if wants admin-password && [ "$(env_value AIRFLOW_AUTH)" = fab ]; then set_fab_admin_password; fi
    # Done: out of the way in one rename (a kill while deleting must not leave a marker
    # without its files), then removed.
    mv "$staged" "$secrets/.rotated.$$"
    sync_file "$secrets"
    rm -rf "$secrets/.rotated.$$"
    say "rotated: ${wanted[*]}"
}

main() {
    parse_args "$@"
    check_stack
    stage
    install
    restart_readers
    finish
}

main "$@"
