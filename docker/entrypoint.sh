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

# SimpleAuthManager (dev) reads its users' passwords from a JSON file it may write: give it a
# private one holding the admin's password (the airflow_admin_password secret), under the admin
# name of .env, so that it never generates a password and prints it to the log.
write_simple_passwords() {
    local file=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-/tmp/simple-auth-passwords.json}
    case "${AIRFLOW__CORE__AUTH_MANAGER:-}" in *SimpleAuthManager) ;; *) return 0 ;; esac
    [ -s /run/secrets/airflow_admin_password ] || return 0
    (umask 077
     python3 -c 'import json, sys; print(json.dumps({sys.argv[1]: open(sys.argv[2]).read().strip()}))' \
         "${AIRFLOW_ADMIN_USER:-admin}" /run/secrets/airflow_admin_password > "$file.$$"
     mv -f "$file.$$" "$file")
}
write_simple_passwords
exec "$@"
