#!/usr/bin/env bash
# deploy.sh - lay out, re-deploy and operate a dev or production instance of the Compose stack.
#
# Usage: ./deploy.sh --dest DIR [options]            lay out a new instance, or re-deploy one
#        ./deploy.sh user --dest DIR COMMAND ...      users and roles of the UI (--auth fab)
#        ./deploy.sh backup --dest DIR [--out FILE]   back up both databases of a running stack
#        ./deploy.sh restore --dest DIR --from FILE   restore such a backup into an instance
#        ./deploy.sh rotate --dest DIR SECRET...      replace secrets of a running instance
#        (./deploy.sh user|backup|restore|rotate -h for theirs)
#
#   --dest DIR               the instance folder (created); holds .env, docker-compose.yaml,
#                            secrets/, dags/, config/, logs/, data/, processing/, plugins/
#   --env dev|prod           which instance (default dev)
#   --arch-root PATH         the archive root, mounted as /mnt (must exist and be writable by
#                            the sync user; prod: required; dev default: DIR/archive)
#   --sync-uid N             uid of the archive's sync user: the tasks run as it and it owns
#                            secrets/ (default: the user running deploy.sh, also under sudo)
#   --aws-credentials FILE   AWS credentials, INI with one section per profile
#                            (aws_access_key_id, aws_secret_access_key, region_name)
#   --db-config FILE         a file holding the progress-database URL (default: a database
#                            "glacier_sync" on the stack's own PostgreSQL)
#   --pipeline-config FILE   the pipeline's TOML settings (docs/configuration.md), copied to
#                            DIR/config/glacier-sync.toml (default: a commented template, kept
#                            once it exists)
#   --aws-endpoint-url URL   an S3/SQS emulator instead of AWS (dev only)
#   --image NAME             the image built by bdrc-docker.sh (default bdrc-airflow:latest)
#   --postgres-image NAME    the metadata database's image (default postgres:16-bookworm)
#   --redis-image NAME       the Celery broker's image (default redis:7-bookworm)
#   --executor local|celery  where tasks run: LocalExecutor in the scheduler (default), or
#                            CeleryExecutor workers with Redis (Compose profile "celery")
#   --workers N              Celery workers on this machine (default 1; celery only)
#   --worker-concurrency N   task processes per Celery worker (default 8)
#   --flower on|off          Celery's monitoring UI on 127.0.0.1 (default off; celery only)
#   --flower-port N          Flower's port on 127.0.0.1 (default 5555)
#   --statsd HOST:PORT|off   send Airflow's and the pipeline's metrics to this StatsD server
#                            (default off; docs/operations.md lists the metrics)
#   --alert-email-to ADDRS|off   send notices (a held work, an expiring copy, a failed run) by
#                            e-mail to these addresses, comma-separated (docs/operations.md)
#   --alert-email-from ADDR  the notices' sender address
#   --smtp HOST:PORT|off     the mail server
#   --smtp-user USER|off     log in to it as USER (with STARTTLS)
#   --smtp-password-file FILE  USER's password, copied into secrets/alert_smtp_password
#   --smtp-starttls on|off   STARTTLS (default: on with --smtp-user, else off)
#   --alert-webhook-url-file FILE|off  a file holding the webhook's URL (a JSON POST per
#                            notice; the URL may carry a token), copied into secrets/
#   --auth simple|fab        sign-in: fab (users and roles; prod default) or simple (one admin,
#                            dev default)
#   --admin-user NAME        the UI's admin user (default admin; kept from the last deploy)
#   --project-name NAME      the Compose project (default bdrc-ENV-<DIR's name>; kept once set)
#   --ui-port N              UI port on 127.0.0.1 (default 8080)
#   --dry-run                check the inputs and print what would be done; change nothing
#   --force                  overwrite a hand-edited .env (secrets and data are never replaced)
#   -h, --help               this help
#
# Secrets (fernet key, JWT and API secrets, admin and PostgreSQL passwords) are generated once
# and kept on every re-deploy. Data, logs, the databases and the archive are never deleted.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Options left empty are taken from the instance's .env on a re-deploy, else the defaults.
dest="" env_name="" arch_root="" sync_uid="" aws_credentials="" db_config="" pipeline_config=""
endpoint="" endpoint_given=0 image="" ui_port="" dry_run=0 force=0
postgres_image=${POSTGRES_IMAGE:-} redis_image=${REDIS_IMAGE:-} auth="" admin_user="" project=""
executor="" workers="" workers_given=0 concurrency="" flower="" flower_port="" statsd=""
# What this deploy changed (the next steps depend on them), and what the instance had.
changed_secrets=0 changed_compose=0 changed_dags=0 changed_env=0 old_admin=""
readonly FAB_MANAGER=airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager
readonly SIMPLE_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager

me=deploy.sh
# shellcheck source=scripts/shell-common.sh
source "$repo/scripts/shell-common.sh"   # usage, say, die (exit 2), fail (exit 1), need_value
# shellcheck source=scripts/deploy-alerts.sh
source "$repo/scripts/deploy-alerts.sh"   # the notice options
# The host's python3, resolved once: behind a version manager's shim (pyenv) every call would
# start a tree of shell processes first.
host_python=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)
# tool SUBCOMMAND ARG...: deploytools (src/deploytools), stdlib only (the host's python3, no venv).
tool() { PYTHONPATH="$repo/src" PYTHONDONTWRITEBYTECODE=1 "$host_python" -m deploytools "$@"; }
# check SUBCOMMAND ARG...: a deploytools check; its one-line error becomes deploy.sh's.
check() { local why; why=$(tool "$@" 2>&1) || die "$why"; }
act() { if [ "$dry_run" -eq 1 ]; then echo "would: $*"; else "$@"; fi; }
# env_value NAME: NAME's value in the instance's current .env (empty when absent).
env_value() { [ -f "$dest/.env" ] && sed -n "s/^$1=//p" "$dest/.env" | tail -n 1 || true; }
# deployed_value NAME: NAME as deploy.sh last wrote it (.env.deployed; older deploys: .env).
# Re-deploys inherit these; hand edits of .env stay hand edits (reported, kept unless --force).
deployed_value() {
    local file=$dest/.env.deployed
    [ -f "$file" ] || file=$dest/.env
    [ -f "$file" ] && sed -n "s/^$1=//p" "$file" | tail -n 1 || true
}
docker_up() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

# parse_args ARG...: the options into their variables; bad usage exits 2.
parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --dest) need_value "$@"; dest=$2; shift 2 ;;
            --env) need_value "$@"; env_name=$2; shift 2 ;;
            --arch-root) need_value "$@"; arch_root=$2; shift 2 ;;
            --sync-uid) need_value "$@"; sync_uid=$2; shift 2 ;;
            --aws-credentials) need_value "$@"; aws_credentials=$2; shift 2 ;;
            --db-config) need_value "$@"; db_config=$2; shift 2 ;;
            --pipeline-config) need_value "$@"; pipeline_config=$2; shift 2 ;;
            --aws-endpoint-url) need_value "$@"; endpoint=$2; endpoint_given=1; shift 2 ;;
            --image) need_value "$@"; image=$2; shift 2 ;;
            --postgres-image) need_value "$@"; postgres_image=$2; shift 2 ;;
            --redis-image) need_value "$@"; redis_image=$2; shift 2 ;;
            --auth) need_value "$@"; auth=$2; shift 2 ;;
            --executor) need_value "$@"; executor=$2; shift 2 ;;
            --workers) need_value "$@"; workers=$2; workers_given=1; shift 2 ;;
            --worker-concurrency) need_value "$@"; concurrency=$2; shift 2 ;;
            --flower) need_value "$@"; flower=$2; shift 2 ;;
            --statsd) need_value "$@"; statsd=$2; shift 2 ;;
            --alert-email-to|--alert-email-from|--smtp|--smtp-user|--smtp-starttls|--smtp-password-file|--alert-webhook-url-file)
                need_value "$@"; alert_option "$1" "$2"; shift 2 ;;
            --flower-port) need_value "$@"; flower_port=$2; shift 2 ;;
            --admin-user) need_value "$@"; admin_user=$2; shift 2 ;;
            --project-name) need_value "$@"; project=$2; shift 2 ;;
            --ui-port) need_value "$@"; ui_port=$2; shift 2 ;;
            --dry-run) dry_run=1; shift ;;
            --force) force=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown option $1" ;;
        esac
    done
}

# ---- check every input before touching anything -------------------------------------------

# refuse_change OPTION VALUE NAME: an existing instance's NAME in .env changes only when the
# option says so (a re-deploy that forgot it must not move the archive, the uid, ...).
refuse_change() {
    local kept
    kept=$(deployed_value "$3")
    [ -z "$kept" ] || [ "$kept" = "$2" ] || [ "$force" -eq 1 ] \
        || die "$1 $2 would change this instance's $3 (now $kept); re-run with --force if you mean it"
}

# executor_name CLASS: local or celery for an AIRFLOW_EXECUTOR value (empty: empty).
executor_name() {
    case "$1" in CeleryExecutor) echo celery ;; LocalExecutor) echo local ;; *) echo "" ;; esac
}

# inherit_from_env: a re-deploy keeps what the instance has unless an option changes it.
inherit_from_env() {
    [ -f "$dest/.env" ] || return 0
    env_name=${env_name:-$(deployed_value DEPLOY_ENV)}
    if [ -n "$project" ]; then refuse_change --project-name "$project" COMPOSE_PROJECT_NAME; fi
    arch_root=${arch_root:-$(deployed_value ARCH_ROOT)}
    sync_uid=${sync_uid:-$(deployed_value SYNC_ACCESS_UID)}
    image=${image:-$(deployed_value BDRC_IMAGE)}
    postgres_image=${postgres_image:-$(deployed_value POSTGRES_IMAGE)}
    redis_image=${redis_image:-$(deployed_value REDIS_IMAGE)}
    ui_port=${ui_port:-$(deployed_value AIRFLOW_UI_PORT)}
    executor=${executor:-$(executor_name "$(deployed_value AIRFLOW_EXECUTOR)")}
    workers=${workers:-$(deployed_value CELERY_WORKERS)}
    flower_port=${flower_port:-$(deployed_value FLOWER_PORT)}
    concurrency=${concurrency:-$(deployed_value CELERY_WORKER_CONCURRENCY)}
    if [ -z "$flower" ]; then
        case ",$(deployed_value COMPOSE_PROFILES)," in *,flower,*) flower=on ;; esac
    fi
    instance_id=$(deployed_value GLACIER_SYNC_INSTANCE_ID)
    if [ -z "$statsd" ] && [ "$(deployed_value STATSD_ON)" = True ]; then
        statsd="$(deployed_value STATSD_HOST):$(deployed_value STATSD_PORT)"
    fi
    [ "$endpoint_given" -eq 1 ] || endpoint=$(deployed_value AWS_ENDPOINT_URL)
    inherit_alerts
}

# check_executor: --executor, --workers and --flower agree (defaults: local, 1, off).
check_executor() {
    executor=${executor:-local} flower=${flower:-off} flower_port=${flower_port:-5555}
    concurrency=${concurrency:-8}
    [[ $concurrency =~ ^[0-9]+$ ]] && [ "$concurrency" -ge 1 ] && [ "$concurrency" -le 256 ] \
        || die "--worker-concurrency must be a number from 1 to 256, not '$concurrency'"
    case "$executor" in local|celery) ;; *) die "--executor must be local or celery, not '$executor'" ;; esac
    case "$flower" in on|off) ;; *) die "--flower must be on or off, not '$flower'" ;; esac
    [[ $flower_port =~ ^[0-9]+$ ]] || die "--flower-port must be a number, not '$flower_port'"
    if [ "$executor" = local ]; then
        [ "$workers_given" -eq 0 ] || [ "$workers" = 1 ] || [ "$workers" = 0 ] \
            || die "--workers $workers needs --executor celery (LocalExecutor runs the tasks in the scheduler)"
        [ "$flower" = off ] || die "--flower on needs --executor celery"
        workers=0
    else
        workers=${workers:-1}
        [ "$workers" = 0 ] && workers=1
        [[ $workers =~ ^[0-9]+$ ]] && [ "$workers" -le 64 ] \
            || die "--workers must be a number of workers from 1 to 64, not '$workers'"
    fi
    [ -n "${instance_id:-}" ] || instance_id=$(tool instance-id)
    check_statsd
}

# check_statsd: --statsd HOST:PORT or off (default off) -> statsd_host, statsd_port.
check_statsd() {
    statsd=${statsd:-off} statsd_host="" statsd_port=8125
    [ "$statsd" = off ] && return 0
    [[ $statsd =~ ^([A-Za-z0-9._-]+):([0-9]+)$ ]] \
        || die "--statsd must be HOST:PORT (e.g. statsd.example.org:8125) or off, not '$statsd'"
    statsd_host=${BASH_REMATCH[1]} statsd_port=${BASH_REMATCH[2]}
    [ "$statsd_port" -ge 1 ] && [ "$statsd_port" -le 65535 ] \
        || die "--statsd port must be from 1 to 65535, not $statsd_port"
}

check_inputs() {
    [ -n "$dest" ] || die "--dest DIR is required (see -h)"
    inherit_from_env
    env_name=${env_name:-dev} image=${image:-bdrc-airflow:latest} ui_port=${ui_port:-8080}
    postgres_image=${postgres_image:-postgres:16-bookworm} redis_image=${redis_image:-redis:7-bookworm}
    case "$env_name" in dev|prod) ;; *) die "--env must be dev or prod, not '$env_name'" ;; esac
    check_executor
    check_alerts
    refuse_change --env "$env_name" DEPLOY_ENV
    [ -n "$sync_uid" ] || sync_uid=${SUDO_UID:-$(id -u)}
    [[ $sync_uid =~ ^[0-9]+$ ]] || die "--sync-uid must be a numeric uid, not '$sync_uid'"
    [[ $ui_port =~ ^[0-9]+$ ]] || die "--ui-port must be a number, not '$ui_port'"
    if [ "$sync_uid" = 0 ]; then
        echo "deploy.sh: warning: the tasks will run as root (uid 0); give --sync-uid N" >&2
    fi
    if [ "$env_name" = prod ]; then
        [ -n "$arch_root" ] || die "prod needs --arch-root PATH (the archive root, mounted as /mnt)"
        [ -n "$aws_credentials" ] || [ -s "$dest/secrets/aws" ] || die "prod needs --aws-credentials FILE"
        [ -z "$endpoint" ] || die "--aws-endpoint-url is for dev (an emulator); prod talks to AWS"
    fi
    if [ -n "$arch_root" ]; then
        [ -d "$arch_root" ] || die "--arch-root $arch_root does not exist; create it or fix the path"
        arch_root=$(cd "$arch_root" && pwd)
    fi
    if [ -n "$endpoint" ] && ! [[ $endpoint =~ ^https?:// ]]; then
        die "--aws-endpoint-url must be an http(s) URL, not '$endpoint'"
    fi
    if [ -n "$pipeline_config" ]; then
        [ -f "$pipeline_config" ] || die "--pipeline-config $pipeline_config does not exist"
        check check-toml "$pipeline_config"
    fi
    if [ -n "$db_config" ]; then
        [ -f "$db_config" ] || die "--db-config $db_config does not exist"
        grep -qE '^[a-z0-9+]+://' "$db_config" \
            || die "--db-config $db_config must hold a database URL such as postgresql+psycopg2://user:pw@host/db"
    fi
    if [ -n "$aws_credentials" ]; then
        [ -f "$aws_credentials" ] || die "--aws-credentials $aws_credentials does not exist"
        # Every profile the pipeline config names must be a section of the credentials file.
        check check-aws-credentials "$aws_credentials" ${pipeline_config:+"$pipeline_config"}
    fi
    if [ -e "$dest" ] && [ ! -d "$dest" ]; then die "--dest $dest exists and is not a folder"; fi
    refuse_under_rotation "$dest"   # a re-deploy never writes secrets under it
    if [ "$(id -u)" -ne 0 ] && [ "$sync_uid" != "$(id -u)" ] && [ "$dry_run" -eq 0 ]; then
        die "secrets must belong to uid $sync_uid: run deploy.sh as root (sudo) or as that user"
    fi
}

# choose_names: auth manager, admin and project name; given options win, then the instance's
# current .env (a re-deploy keeps them), then the defaults.
choose_names() {
    if [ -d "$dest" ]; then dest=$(cd "$dest" && pwd); else dest=$(realpath -m "$dest"); fi
    local kept_auth
    kept_auth=$(deployed_value AIRFLOW_AUTH)
    auth=${auth:-${kept_auth:-$([ "$env_name" = prod ] && echo fab || echo simple)}}
    case "$auth" in
        fab) auth_manager=$FAB_MANAGER ;;
        simple) auth_manager=$SIMPLE_MANAGER ;;
        *) die "--auth must be simple or fab, not '$auth'" ;;
    esac
    if [ "$env_name" = prod ] && [ "$auth" = simple ]; then
        echo "deploy.sh: warning: prod with --auth simple: one shared admin, no roles (use fab)" >&2
    fi
    old_admin=$(deployed_value AIRFLOW_ADMIN_USER)
    admin_user=${admin_user:-${old_admin:-admin}}
    [[ $admin_user =~ ^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$ ]] \
        || die "--admin-user '$admin_user': use letters, digits and . _ @ - (at most 64)"
    local base
    base=$(basename "$dest" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9_\n-' '-')
    project=${project:-$(deployed_value COMPOSE_PROJECT_NAME)}
    project=${project:-bdrc-$env_name-$base}
    [[ $project =~ ^[a-z0-9][a-z0-9_-]*$ ]] \
        || die "--project-name '$project': lowercase letters, digits, - and _ only"
}

# check_project_free: no other destination runs (or ran) a Compose project of this name; its
# `down -v` would otherwise remove our containers and volumes, and ours theirs.
check_project_free() {
    if ! docker_up; then
        echo "deploy.sh: warning: Docker is unreachable from here: cannot check that no other instance uses the Compose project '$project', nor that a renamed project leaves no database behind" >&2
        return 0
    fi
    local dirs other
    dirs=$(docker ps -a --filter "label=com.docker.compose.project=$project" \
        --format '{{.Label "com.docker.compose.project.working_dir"}}' | sort -u)
    while read -r other; do
        [ -z "$other" ] || [ "$other" -ef "$dest" ] && continue
        die "Compose project '$project' belongs to the instance in $other; give this one another --project-name"
    done <<< "$dirs"
    if [ -z "$dirs" ] && [ "$(deployed_value COMPOSE_PROJECT_NAME)" != "$project" ] \
        && docker volume inspect "${project}_postgres-db" >/dev/null 2>&1; then
        die "a database volume ${project}_postgres-db exists (another instance's?); give --project-name, or remove the volume if it is garbage"
    fi
    check_database_stays
}

# check_database_stays: a new project name (--force) on an instance whose database volume exists
# would start the new project on an empty database, the metadata and the progress records left
# behind in the old volume: refused, even with --force.
check_database_stays() {
    local old
    old=$(deployed_value COMPOSE_PROJECT_NAME)
    [ -n "$old" ] && [ "$old" != "$project" ] || return 0
    docker volume inspect "${old}_postgres-db" >/dev/null 2>&1 || return 0
    die "--project-name $project would start this instance on an empty database (its runs, and the progress records unless --db-config, stay in the volume ${old}_postgres-db); keep --project-name $old, or move them as docs/operations.md says (\"Rename the Compose project\": backup, down, volume rm, deploy, restore)"
}

# check_archive_writable: the sync user can write the archive root (a warning: a mount may
# come later, and the pipeline refuses to sync into an unusable root anyway).
check_archive_writable() {
    [ -n "$arch_root" ] && [ "$(id -u)" -eq 0 ] && [ "$sync_uid" != 0 ] || return 0
    setpriv --reuid="$sync_uid" --regid=0 --clear-groups test -w "$arch_root" 2>/dev/null \
        || echo "deploy.sh: warning: uid $sync_uid cannot write the archive root $arch_root; syncs will fail until it can (chown or chmod it)" >&2
}

# ---- lay out the instance ---------------------------------------------------------------------
# lay_out_folders: the instance's folders, and the dev archive root when none is given.
lay_out_folders() {
    act mkdir -p "$dest"
    say "${env_name} instance in $dest (Compose project $project, sign-in: $auth)"
    for sub in logs dags plugins processing data config secrets; do
        act mkdir -p "$dest/$sub"
    done
    if [ -z "$arch_root" ]; then
        arch_root=$dest/archive
        if [ ! -d "$arch_root" ]; then
            act mkdir -p "$arch_root"
            [ "$(id -u)" -ne 0 ] || act chown "$sync_uid:0" "$arch_root"
        fi
    fi
}

random_secret() { tool secret; }
fernet_key() { tool fernet-key; }

# write_secret NAME GENERATOR|--from FILE: created once (generated) or copied from FILE. A
# changed copy is written into the same file (a running container's file secret is a bind
# mount of it) and the services must be recreated to read it.
write_secret() {
    local name=$1 target="$dest/secrets/$1"
    if [ "$2" = --from ]; then
        if cmp -s "$3" "$target"; then
            say "secrets/$name: unchanged"
        elif [ "$dry_run" -eq 1 ]; then
            echo "would: copy $3 into secrets/$name"
        else
            (umask 077; cat "$3" > "$target")
            [ ! -s "$target" ] || changed_secrets=1
            say "secrets/$name: from $3"
        fi
    elif [ -s "$target" ]; then
        say "secrets/$name: kept"
        return 0
    elif [ "$dry_run" -eq 1 ]; then
        echo "would: generate secrets/$name"
    else
        (umask 077; "$2" | tr -d '\n' > "$target")   # no newline: read by *_CMD as is
        say "secrets/$name: generated"
    fi
}

write_secrets() {
    write_secret postgres_password random_secret
    write_secret airflow_fernet_key fernet_key
    write_secret airflow_jwt_secret random_secret
    write_secret airflow_api_secret_key random_secret
    write_secret airflow_admin_password random_secret
    write_secret flower_password random_secret
    write_secret redis_password random_secret
    # Derived: the metadata DB URL. (The sign-in reads airflow_admin_password itself; the
    # passwords file of older deploys is not used any more.)
    if [ "$dry_run" -eq 0 ]; then
        (umask 077
         printf 'postgresql+psycopg2://airflow:%s@postgres:5432/airflow' \
             "$(cat "$dest/secrets/postgres_password")" > "$dest/secrets/airflow_db_url")
        rm -f "$dest/secrets/simple_auth_passwords.json"
        # The Celery broker's own configuration: its password, nothing kept on disk.
        (umask 077
         printf 'requirepass %s\nsave ""\nappendonly no\n' \
             "$(cat "$dest/secrets/redis_password")" > "$dest/secrets/redis_conf")
    fi
    if [ -n "$aws_credentials" ]; then
        write_secret aws --from "$aws_credentials"
    elif [ ! -e "$dest/secrets/aws" ]; then
        act touch "$dest/secrets/aws"   # empty: boto3's normal chain (instance role, ...)
        say "secrets/aws: empty (no --aws-credentials: the normal AWS chain is used)"
    fi
    if [ -n "$db_config" ]; then
        write_secret progress_db_url --from "$db_config"
    elif [ ! -s "$dest/secrets/progress_db_url" ] && [ "$dry_run" -eq 0 ]; then
        (umask 077; printf 'postgresql+psycopg2://airflow:%s@postgres:5432/glacier_sync\n' \
            "$(cat "$dest/secrets/postgres_password")" > "$dest/secrets/progress_db_url")
        say "secrets/progress_db_url: the stack's PostgreSQL, database glacier_sync"
    fi
    write_alert_secrets
    if [ "$dry_run" -eq 0 ]; then
        chmod 0700 "$dest/secrets"
        chmod 0600 "$dest/secrets"/*
        # Read by the Redis container's own user (not the sync uid); the folder (0700) keeps it
        # private on the host.
        chmod 0644 "$dest/secrets/redis_conf" 2>/dev/null || true
    fi
}

# ---- code and configuration ---------------------------------------------------------------
# install_compose_file: the stack's Compose file, replaced whole when it changed.
install_compose_file() {
    if ! cmp -s "$repo/bdrc-docker-compose.yml" "$dest/docker-compose.yaml"; then
        changed_compose=1
        act cp "$repo/bdrc-docker-compose.yml" "$dest/docker-compose.yaml.deploying"
        act mv -f "$dest/docker-compose.yaml.deploying" "$dest/docker-compose.yaml"
    fi
}

# dag_files ROOT: the DAG files below ROOT (no caches, build artefacts or hidden files).
dag_files() {
    (cd "$1" && find . \( -name __pycache__ -o -name '*.egg-info' -o -name '.*' ! -name . \) \
        -prune -o -type f -print)
}

# update_dags: make dags/ mirror the repository's in place, so a running stack's bind mount keeps
# seeing it; each changed file is written beside its name, then renamed (it appears whole).
update_dags() {
    local src=$repo/dags dst=$dest/dags rel
    changed_dags=0
    while read -r rel; do
        cmp -s "$src/$rel" "$dst/$rel" && continue
        mkdir -p "$(dirname "$dst/$rel")"
        cp -p "$src/$rel" "$dst/$rel.deploying" && mv -f "$dst/$rel.deploying" "$dst/$rel"
        chmod a+r "$dst/$rel"
        changed_dags=1
    done < <(dag_files "$src")
    while read -r rel; do
        [ -e "$src/$rel" ] || { rm -f "$dst/$rel"; changed_dags=1; }
    done < <(cd "$dst" && find . -type f ! -path '*/__pycache__/*' -print)
    (cd "$dst" && find . -mindepth 1 -type d ! -name __pycache__ -print) | sort -r \
        | while read -r rel; do [ -d "$src/$rel" ] || rm -rf "${dst:?}/$rel"; done
}

# install_dags: dags/ updated in place (said), or what would be (--dry-run).
install_dags() {
    if [ "$dry_run" -eq 1 ]; then
        echo "would: update $dest/dags in place from $repo/dags"
    else
        update_dags
        say "dags/: $([ "$changed_dags" -eq 1 ] && echo "updated in place from $repo/dags" || echo unchanged)"
    fi
}

# install_pipeline_config: the given pipeline settings, or a template once.
install_pipeline_config() {
    if [ -n "$pipeline_config" ]; then
        if ! cmp -s "$pipeline_config" "$dest/config/glacier-sync.toml"; then
            # Readable by the sync user whatever the source's mode (it holds no secret).
            act install -m 0644 "$pipeline_config" "$dest/config/glacier-sync.toml"
            say "config/glacier-sync.toml: from $pipeline_config"
        fi
    elif [ ! -e "$dest/config/glacier-sync.toml" ] && [ "$dry_run" -eq 0 ]; then
        cat > "$dest/config/glacier-sync.toml" <<'TOML'
# Settings of the restore pipeline (docs/configuration.md). The stack sets data_root,
# work_root, archive_root (/mnt), the credentials file and the progress DB; add the queues:
#
# [[queues]]
# name = "tbrc"
# queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/glacier-restores"
# region = "us-east-1"
# bucket = "glacier.archive.example.org"
# profile = "default"          # a section of secrets/aws
TOML
        say "config/glacier-sync.toml: template (add your queues)"
    fi
}

# ---- .env ---------------------------------------------------------------------------------
# compose_profiles: the optional services of this instance, comma-separated.
compose_profiles() {
    [ "$executor" = celery ] || return 0
    [ "$flower" = on ] && echo celery,flower || echo celery
}
# compose_env: the .env this deploy writes (new_env), and where it goes.
compose_env() {
    env_file=$dest/.env
    deployed=$dest/.env.deployed   # the .env as deploy.sh last wrote it: hand edits are the diff
    new_env=$(cat <<ENV
# Generated by deploy.sh for the ${env_name} instance. Edit by hand if you must: deploy.sh keeps
# your edits unless run with --force. Secrets are not here: they are files in secrets/.

# dev or prod: the pipeline's settings profile (GLACIER_SYNC_ENV).
DEPLOY_ENV=${env_name}
# The image built by bdrc-docker.sh.
BDRC_IMAGE=${image}
# The PostgreSQL image of the metadata database.
POSTGRES_IMAGE=${postgres_image}
# The Redis image of the Celery broker (profile "celery" only).
REDIS_IMAGE=${redis_image}
# uid of the archive's sync user: the Airflow processes (and the tasks) run as it.
SYNC_ACCESS_UID=${sync_uid}
# The archive root on this machine, mounted as /mnt in the containers.
ARCH_ROOT=${arch_root}
# Downloads (incoming/), the SQLite files and sync logs of the pipeline.
DATA_DIR=./data
# Airflow's task and service logs.
LOGS_DIR=./logs
# The DAG files (updated in place by deploy.sh).
DAGS_DIR=./dags
# Airflow plugins.
PLUGINS_DIR=./plugins
# Work folders of debagged bags before their sync.
PROCESSING_DIR=./processing
# The pipeline's TOML settings (GLACIER_SYNC_CONFIG) live here.
CONFIG_DIR=./config
# The file secrets (mode 0600, owned by SYNC_ACCESS_UID).
SECRETS_DIR=./secrets
# An S3/SQS emulator URL (dev only; empty: AWS itself).
AWS_ENDPOINT_URL=${endpoint}
# Where tasks run: LocalExecutor (in the scheduler) or CeleryExecutor (deploy.sh --executor).
AIRFLOW_EXECUTOR=$([ "$executor" = celery ] && echo CeleryExecutor || echo LocalExecutor)
# Optional services: "celery" (Redis and the workers), "flower" (Celery's monitoring UI).
COMPOSE_PROFILES=$(compose_profiles)
# Celery workers on this machine (deploy.sh --workers N; 0 with LocalExecutor).
CELERY_WORKERS=${workers}
# Task processes per Celery worker (deploy.sh --worker-concurrency N).
CELERY_WORKER_CONCURRENCY=${concurrency}
# Flower's port on 127.0.0.1 (user flower, password in secrets/flower_password).
FLOWER_PORT=${flower_port}
# Metrics to StatsD (deploy.sh --statsd HOST:PORT|off): Airflow's own and the pipeline's.
STATSD_ON=$([ -n "$statsd_host" ] && echo True || echo False)
# The StatsD server's host name or address (empty: metrics off).
STATSD_HOST=${statsd_host}
# The StatsD server's UDP port.
STATSD_PORT=${statsd_port}
# The pipeline's metrics go to STATSD_HOST when STATSD_ON is True (empty: none).
GLACIER_SYNC_STATSD_HOST=${statsd_host}
# This instance's id: data/ and processing/ carry it, so a worker that does not see them
# (an unmounted shared folder on another machine) refuses to start.
GLACIER_SYNC_INSTANCE_ID=${instance_id}
# The UI binds to this address of the host (127.0.0.1: this machine only).
AIRFLOW_UI_BIND=127.0.0.1
# The UI's port on the host.
AIRFLOW_UI_PORT=${ui_port}
# The URL users open (links in the UI and in logs).
AIRFLOW_BASE_URL=http://localhost:${ui_port}
# Sign-in: fab (users and roles: deploy.sh user) or simple (one admin, development only).
AIRFLOW_AUTH=${auth}
# The auth manager class that goes with AIRFLOW_AUTH.
AIRFLOW_AUTH_MANAGER=${auth_manager}
# Admin user of the UI (its password: secrets/airflow_admin_password). Change it with
# deploy.sh --admin-user NAME, then docker compose up -d.
AIRFLOW_ADMIN_USER=${admin_user}
# New DAGs start paused; unpause them in the UI once the settings are right.
DAGS_PAUSED_AT_CREATION=True
# Seconds between scans of the dags folder.
DAG_REFRESH_SECONDS=60
$(alert_env)
# Compose project name (container and volume names); unique on this machine.
COMPOSE_PROJECT_NAME=${project}
ENV
)
}

# env_status: new, same, deployed (as deploy.sh last wrote it) or edited (by hand since).
env_status() {
    if [ ! -f "$env_file" ]; then echo new
    elif [ "$(cat "$env_file")" = "$new_env" ]; then echo same
    elif [ -f "$deployed" ] && cmp -s "$deployed" "$env_file"; then echo deployed
    elif [ ! -f "$deployed" ] && [ -f "$env_file.deployed.sha256" ] \
        && (cd "$dest" && sha256sum --status -c .env.deployed.sha256 2>/dev/null); then echo deployed
    else echo edited
    fi
}

write_env() {
    local status
    status=$(env_status)
    changed_env=0
    if [ "$status" = same ]; then
        [ -f "$deployed" ] || [ "$dry_run" -eq 1 ] || cp "$env_file" "$deployed"
        rm -f "$env_file.deployed.sha256"
        say ".env: unchanged"
        return 0
    fi
    if [ "$status" = edited ] && [ "$force" -eq 0 ]; then
        say ".env: edited by hand since the last deploy; kept (--force replaces it). Your edits:"
        if [ -f "$deployed" ]; then diff -u --label deployed --label .env "$deployed" "$env_file" | tail -n +3 || true
        else echo "    (no copy of the deployed .env to compare with)"; fi
        say "what this deploy would change in .env (apply by hand, or re-run with --force):"
        diff -u --label .env --label new "$env_file" <(printf '%s\n' "$new_env") | tail -n +3 || true
        return 0
    fi
    if [ "$dry_run" -eq 1 ]; then
        echo "would: write $env_file:"
        echo "$new_env" | sed 's/^/    /'
        return 0
    fi
    if [ "$status" = edited ]; then
        cp -p "$env_file" "$env_file.before-force"
        say ".env: your hand edits are replaced (--force); they are kept in .env.before-force"
    fi
    if [ "$status" != new ]; then
        say ".env: changes"
        diff -u --label .env --label new "$env_file" <(printf '%s\n' "$new_env") | tail -n +3 || true
    fi
    printf '%s\n' "$new_env" > "$env_file.deploying"
    mv -f "$env_file.deploying" "$env_file"
    cp "$env_file" "$deployed"
    rm -f "$env_file.deployed.sha256"
    changed_env=1
    say ".env: written"
}

# adopt_written_env: a kept hand-edited .env is what the stack will use: its names win.
adopt_written_env() {
    [ "$dry_run" -eq 0 ] || return 0
    admin_user=$(env_value AIRFLOW_ADMIN_USER) ui_port=$(env_value AIRFLOW_UI_PORT)
    project=$(env_value COMPOSE_PROJECT_NAME) auth=$(env_value AIRFLOW_AUTH)
}
# fix_ownership: the sync user of the .env the stack will use (a kept hand edit included) owns
# the secrets and the writable mounts.
fix_ownership() {
    [ "$(id -u)" -eq 0 ] && [ "$dry_run" -eq 0 ] || return 0
    local uid
    uid=$(env_value SYNC_ACCESS_UID)
    chown "$uid:0" "$dest/secrets" "$dest/secrets"/* \
        "$dest/logs" "$dest/data" "$dest/processing" "$dest/plugins"
}

# ---- what to run next -----------------------------------------------------------------------
stack_running() {
    docker_up && [ -n "$(docker ps -q --filter "label=com.docker.compose.project=$project")" ]
}

next_steps_new() {
    local where
    where=$(printf '%q' "$dest")
    echo
    echo "Next steps:"
    echo "  1. Build the image if not done:   $(printf '%q' "$repo")/bdrc-docker.sh --image $image"
    if [ -z "$pipeline_config" ] && ! grep -q '^\[\[queues\]\]' "$dest/config/glacier-sync.toml" 2>/dev/null; then
        echo "  2. Add your queues:               \$EDITOR $where/config/glacier-sync.toml"
    fi
    echo "  3. Start the stack:               cd $where && docker compose up -d   (or docker-compose up -d)"
    echo "  4. Open the UI:                   http://127.0.0.1:${ui_port}  user $admin_user, password in"
    echo "                                    $where/secrets/airflow_admin_password"
    if [ "$flower" = on ]; then
        echo "     Flower (Celery workers):      http://127.0.0.1:${flower_port}  user flower, password in"
        echo "                                    $where/secrets/flower_password"
    fi
    echo "  5. Restore events start sqs_event_dag within seconds (on by default); sqs_scheduled_dag"
    echo "     is the scheduled fallback. Re-run deploy.sh to update the DAGs; secrets are kept."
}

next_steps_running() {
    echo
    echo "Next steps (the stack $project is running):"
    if [ "$changed_secrets" -eq 1 ]; then
        echo "  cd $(printf '%q' "$dest") && docker compose up -d --force-recreate   (or docker-compose ...)"
        echo "  a secret changed: every service must be recreated to read it; airflow-init runs first."
    elif [ "$changed_env" -eq 1 ] || [ "$changed_compose" -eq 1 ]; then
        echo "  cd $(printf '%q' "$dest") && docker compose up -d   (or docker-compose up -d)"
        echo "  recreates the services whose settings changed; airflow-init runs first (migrations)."
    else
        echo "  nothing to restart."
    fi
    if [ "$changed_dags" -eq 1 ]; then
        echo "  The changed DAGs are read by the dag-processor within DAG_REFRESH_SECONDS ($(env_value DAG_REFRESH_SECONDS) s)."
    fi
    if [ "$auth" = fab ] && [ -n "$old_admin" ] && [ "$old_admin" != "$admin_user" ]; then
        echo "  The admin is now $admin_user; $old_admin still exists: ./deploy.sh user --dest $dest remove $old_admin"
    fi
}

print_next_steps() {
    if [ "$dry_run" -eq 1 ]; then
        return 0
    elif stack_running; then
        next_steps_running
    else
        next_steps_new
    fi
}

# ---- main -------------------------------------------------------------------------------------
main() {
    case "${1:-}" in
        user|backup|restore) exec bash "$repo/scripts/stack-admin.sh" "$@" ;;
        rotate) shift; exec bash "$repo/scripts/rotate-secrets.sh" "$@" ;;
    esac
    parse_args "$@"
    check_inputs
    choose_names
    check_project_free
    lay_out_folders
    check_archive_writable
    write_secrets
    install_compose_file
    install_dags
    install_pipeline_config
    compose_env
    write_env
    adopt_written_env
    fix_ownership
    print_next_steps
}

main "$@"
