#!/usr/bin/env bash
# Entry point of the pipeline's containers: turn the Compose file secrets into the settings
# Airflow and the pipeline read, then run the command. Secrets are never echoed.
set -euo pipefail

secret() { [ -s "/run/secrets/$1" ] && tr -d '\r\n' < "/run/secrets/$1"; }

if key=$(secret airflow_fernet_key); then export AIRFLOW__CORE__FERNET_KEY=$key; fi
if jwt=$(secret airflow_jwt_secret); then export AIRFLOW__API_AUTH__JWT_SECRET=$jwt; fi
if pw=$(secret postgres_password); then
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://${POSTGRES_USER:-airflow}:${pw}@${POSTGRES_HOST:-postgres}:5432/${POSTGRES_DB:-airflow}"
    if [ "${AIRFLOW__CORE__EXECUTOR:-}" = CeleryExecutor ]; then
        export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql://${POSTGRES_USER:-airflow}:${pw}@${POSTGRES_HOST:-postgres}:5432/${POSTGRES_DB:-airflow}"
    fi
fi
if [ -s /run/secrets/progress_db_url ]; then
    export GLACIER_SYNC_PROGRESS_DB_URL_FILE=/run/secrets/progress_db_url
fi
if [ -s /run/secrets/airflow_admin_password ]; then
    # SimpleAuthManager reads {"user": "password"}; written where the container may write.
    umask 077
    printf '{"%s": "%s"}' "${AIRFLOW_ADMIN_USER:-admin}" "$(secret airflow_admin_password)" \
        > /tmp/simple-auth-passwords.json
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=/tmp/simple-auth-passwords.json
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW_ADMIN_USER:-admin}:admin"
fi
exec "$@"
