#!/usr/bin/env bash
# deploy.sh - lay out a dev or production instance of the pipeline's Compose stack.
#
# Usage: ./deploy.sh --dest DIR [options]
#   --dest DIR               the instance folder (created); holds .env, docker-compose.yaml,
#                            secrets/, dags/, config/, logs/, data/, processing/, plugins/
#   --env dev|prod           which instance (default dev)
#   --arch-root PATH         the archive root, mounted as /mnt (must exist; prod: required;
#                            dev default: DIR/archive)
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
#   --ui-port N              UI port on 127.0.0.1 (default 8080 dev, 8080 prod)
#   --dry-run                check the inputs and print what would be done; change nothing
#   --force                  overwrite a hand-edited .env (secrets and data are never replaced)
#   -h, --help               this help
#
# Secrets (fernet key, JWT secret, admin and PostgreSQL passwords) are generated once and kept
# on every re-deploy. Data, logs and the archive are never deleted.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest="" env_name=dev arch_root="" sync_uid="" aws_credentials="" db_config=""
pipeline_config="" endpoint="" image=bdrc-airflow:latest ui_port=8080 dry_run=0 force=0

usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
die() { echo "deploy.sh: $*" >&2; exit 1; }
# tool SUBCOMMAND ARG...: glacier_sync.deploytools, stdlib only (the host's python3, no venv).
tool() { PYTHONPATH="$repo/src" PYTHONDONTWRITEBYTECODE=1 python3 -m glacier_sync.deploytools "$@"; }
# check SUBCOMMAND ARG...: a deploytools check; its one-line error becomes deploy.sh's.
check() { local why; why=$(tool "$@" 2>&1) || die "$why"; }
say() { echo "==> $*"; }
act() { if [ "$dry_run" -eq 1 ]; then echo "would: $*"; else "$@"; fi; }

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see -h)"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dest) need_value "$@"; dest=$2; shift 2 ;;
        --env) need_value "$@"; env_name=$2; shift 2 ;;
        --arch-root) need_value "$@"; arch_root=$2; shift 2 ;;
        --sync-uid) need_value "$@"; sync_uid=$2; shift 2 ;;
        --aws-credentials) need_value "$@"; aws_credentials=$2; shift 2 ;;
        --db-config) need_value "$@"; db_config=$2; shift 2 ;;
        --pipeline-config) need_value "$@"; pipeline_config=$2; shift 2 ;;
        --aws-endpoint-url) need_value "$@"; endpoint=$2; shift 2 ;;
        --image) need_value "$@"; image=$2; shift 2 ;;
        --ui-port) need_value "$@"; ui_port=$2; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

# ---- check every input before touching anything -------------------------------------------
[ -n "$dest" ] || die "--dest DIR is required (see -h)"
case "$env_name" in dev|prod) ;; *) die "--env must be dev or prod, not '$env_name'" ;; esac
[ -n "$sync_uid" ] || sync_uid=${SUDO_UID:-$(id -u)}
[[ $sync_uid =~ ^[0-9]+$ ]] || die "--sync-uid must be a numeric uid, not '$sync_uid'"
[[ $ui_port =~ ^[0-9]+$ ]] || die "--ui-port must be a number, not '$ui_port'"
if [ "$sync_uid" = 0 ]; then
    echo "deploy.sh: warning: the tasks will run as root (uid 0); give --sync-uid N" >&2
fi
if [ "$env_name" = prod ]; then
    [ -n "$arch_root" ] || die "prod needs --arch-root PATH (the archive root, mounted as /mnt)"
    [ -n "$aws_credentials" ] || die "prod needs --aws-credentials FILE"
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
if [ "$(id -u)" -ne 0 ] && [ "$sync_uid" != "$(id -u)" ] && [ "$dry_run" -eq 0 ]; then
    die "secrets must belong to uid $sync_uid: run deploy.sh as root (sudo) or as that user"
fi

# ---- lay out the instance ---------------------------------------------------------------------
act mkdir -p "$dest"
dest=$(cd "$dest" 2>/dev/null && pwd || echo "$dest")
say "${env_name} instance in $dest"
for sub in logs dags plugins processing data config secrets; do
    act mkdir -p "$dest/$sub"
done
if [ -z "$arch_root" ]; then
    arch_root=$dest/archive
    act mkdir -p "$arch_root"
fi

random_secret() { tool secret; }
fernet_key() { tool fernet-key; }

# write_secret NAME GENERATOR|--from FILE: created once (generated) or copied from FILE.
write_secret() {
    local name=$1 target="$dest/secrets/$1"
    if [ "$2" = --from ]; then
        act install -m 0600 "$3" "$target"
        say "secrets/$name: from $3"
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

write_secret postgres_password random_secret
write_secret airflow_fernet_key fernet_key
write_secret airflow_jwt_secret random_secret
write_secret airflow_admin_password random_secret
# Derived secrets: the metadata DB URL and the UI passwords file (SimpleAuthManager's JSON).
if [ "$dry_run" -eq 0 ]; then
    (umask 077
     printf 'postgresql+psycopg2://airflow:%s@postgres:5432/airflow' \
         "$(cat "$dest/secrets/postgres_password")" > "$dest/secrets/airflow_db_url"
     tool set-password "$dest/secrets/simple_auth_passwords.json" admin \
         < "$dest/secrets/airflow_admin_password")
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
if [ "$dry_run" -eq 0 ]; then
    chmod 0700 "$dest/secrets"
    chmod 0600 "$dest/secrets"/*
    if [ "$(id -u)" -eq 0 ]; then
        chown "$sync_uid:0" "$dest/secrets" "$dest/secrets"/*
    fi
fi

# ---- code and configuration ---------------------------------------------------------------
act cp "$repo/bdrc-docker-compose.yml" "$dest/docker-compose.yaml"
# update_dags: make dags/ mirror the repository's in place, so a running stack's bind mount keeps
# seeing it; each changed file is written beside its name, then renamed (it appears whole).
update_dags() {
    local src=$repo/dags dst=$dest/dags rel
    (cd "$src" && find . -name __pycache__ -prune -o -type f -print) | while read -r rel; do
        cmp -s "$src/$rel" "$dst/$rel" && continue
        mkdir -p "$(dirname "$dst/$rel")"
        cp -p "$src/$rel" "$dst/$rel.deploying" && mv -f "$dst/$rel.deploying" "$dst/$rel"
    done
    (cd "$dst" && find . -name __pycache__ -prune -o -type f -print) | while read -r rel; do
        [ -e "$src/$rel" ] || rm -f "$dst/$rel"
    done
    (cd "$dst" && find . -mindepth 1 -type d ! -name __pycache__ -print) | sort -r \
        | while read -r rel; do [ -d "$src/$rel" ] || rm -rf "${dst:?}/$rel"; done
}
if [ "$dry_run" -eq 1 ]; then
    echo "would: update $dest/dags in place from $repo/dags"
else
    update_dags
    say "dags/: updated in place from $repo/dags"
fi
if [ -n "$pipeline_config" ]; then
    act cp "$pipeline_config" "$dest/config/glacier-sync.toml"
    say "config/glacier-sync.toml: from $pipeline_config"
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

# ---- .env ---------------------------------------------------------------------------------
env_file=$dest/.env
stamp=$dest/.env.deployed.sha256
new_env=$(cat <<ENV
# Generated by deploy.sh for the ${env_name} instance. Edit by hand if you must: deploy.sh keeps
# your edits unless run with --force. Secrets are not here: they are files in secrets/.

# dev or prod: the pipeline's settings profile (GLACIER_SYNC_ENV).
DEPLOY_ENV=${env_name}
# The image built by bdrc-docker.sh.
BDRC_IMAGE=${image}
# The PostgreSQL image of the metadata database.
POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:16-bookworm}
# uid of the archive's sync user: the Airflow processes (and the tasks) run as it.
SYNC_ACCESS_UID=${sync_uid}
# The archive root on this machine, mounted as /mnt in the containers.
ARCH_ROOT=${arch_root}
# Downloads (incoming/), the SQLite files and sync logs of the pipeline.
DATA_DIR=./data
# Airflow's task and service logs.
LOGS_DIR=./logs
# The DAG files (updated by deploy.sh).
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
# LocalExecutor, or CeleryExecutor with: docker compose --profile celery up -d
AIRFLOW_EXECUTOR=LocalExecutor
# The UI binds to this address of the host (127.0.0.1: this machine only).
AIRFLOW_UI_BIND=127.0.0.1
# The UI's port on the host.
AIRFLOW_UI_PORT=${ui_port}
# The URL users open (links in the UI and in logs).
AIRFLOW_BASE_URL=http://localhost:${ui_port}
# Admin user of the UI (its password: secrets/airflow_admin_password).
AIRFLOW_ADMIN_USER=admin
# New DAGs start paused; unpause them in the UI once the settings are right.
DAGS_PAUSED_AT_CREATION=True
# Seconds between scans of the dags folder.
DAG_REFRESH_SECONDS=60
# Compose project name (container and volume names).
COMPOSE_PROJECT_NAME=bdrc-${env_name}
ENV
)
if [ -f "$env_file" ] && [ "$force" -eq 0 ]; then
    if [ -f "$stamp" ] && (cd "$dest" && sha256sum --status -c "$stamp" 2>/dev/null); then
        act_write=1
    else
        say ".env: edited by hand since the last deploy; kept (use --force to regenerate it)"
        act_write=0
    fi
else
    act_write=1
fi
if [ "$act_write" -eq 1 ]; then
    if [ "$dry_run" -eq 1 ]; then
        echo "would: write $env_file:"
        echo "$new_env" | sed 's/^/    /'
    else
        printf '%s\n' "$new_env" > "$env_file"
        (cd "$dest" && sha256sum .env > "$stamp")
        say ".env: written"
    fi
fi
if [ "$(id -u)" -eq 0 ] && [ "$dry_run" -eq 0 ]; then
    chown "$sync_uid:0" "$dest/logs" "$dest/data" "$dest/processing" "$dest/plugins"
fi

cat <<NEXT

Next steps:
  1. Build the image if not done:   ./bdrc-docker.sh
  2. Add your queues:               \$EDITOR $dest/config/glacier-sync.toml
  3. Start the stack:               cd $dest && docker compose up -d   (or docker-compose up -d)
  4. Open the UI:                   http://127.0.0.1:${ui_port}  user admin, password in
                                    $dest/secrets/airflow_admin_password
  5. Unpause sqs_scheduled_dag in the UI. Re-run deploy.sh to update the DAGs; secrets are kept.
NEXT
