#!/usr/bin/env bash
# Entry point of the pipeline's containers. Secrets need no work here: Compose mounts them in
# /run/secrets and the environment points Airflow (*_CMD) and the pipeline (*_FILE) at them,
# which also holds for `docker compose exec` and healthchecks.
set -euo pipefail

# An arbitrary uid (the archive's sync user) gets a passwd entry, as many tools look it up.
add_user() {
    local uid=$1
    if ! getent passwd "$uid" >/dev/null && [ -w /etc/passwd ]; then
        echo "sync-user-$uid:x:$uid:0:archive sync user:/home/airflow:/bin/bash" >> /etc/passwd
    fi
}
add_user "$(id -u)"
if [ "$(id -u)" = 0 ] && [ -n "${SYNC_ACCESS_UID:-}" ]; then add_user "$SYNC_ACCESS_UID"; fi

# SimpleAuthManager opens its passwords file for writing: give it a private copy of the secret.
if [ -s /run/secrets/simple_auth_passwords ]; then
    (umask 077; cp /run/secrets/simple_auth_passwords /tmp/simple-auth-passwords.json)
fi
exec "$@"
