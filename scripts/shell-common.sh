# shell-common.sh - what deploy.sh, scripts/stack-admin.sh, local-airflow.sh and bdrc-docker.sh
# share; sourced, never run. The script sets `me` (the name its errors start with) first.

# usage: the script's header comment, from line 2 to the first line that is not a comment.
usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }

# say MESSAGE: a step, on stdout.
say() { echo "==> $*"; }

# die MESSAGE: bad usage or settings (exit 2); fail MESSAGE: an operation failed (exit 1).
die() { echo "$me: $*" >&2; exit 2; }
fail() { echo "$me: $*" >&2; exit 1; }

# need_value OPTION [VALUE]: the option was given a value.
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see -h)"; }

# The secrets `deploy.sh rotate` replaces (scripts/rotate-secrets.sh).
ROTATABLE_SECRETS=(fernet jwt api-secret admin-password postgres redis flower aws)

# unfinished_rotations DIR: the secrets whose rotation in the instance DIR was interrupted (their
# new contents still staged in DIR/secrets/.rotating), one a line.
unfinished_rotations() {
    local name
    for name in "${ROTATABLE_SECRETS[@]}"; do
        if [ -s "$1/secrets/.rotating/$name" ]; then echo "$name"; fi
    done
}

# refuse_under_rotation DIR: nothing may write DIR's secrets while a rotation there is unfinished.
refuse_under_rotation() {
    local unfinished
    unfinished=$(unfinished_rotations "$1" | xargs)
    [ -z "$unfinished" ] \
        || die "a rotation of $unfinished is unfinished in $1: finish it first with ./deploy.sh rotate --dest $1 $unfinished"
}
