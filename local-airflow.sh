#!/usr/bin/env bash
# local-airflow.sh - run Apache Airflow 3 locally on this checkout (SQLite or AIRFLOW_DB_URL,
# LocalExecutor).
#
# Usage:
#   ./local-airflow.sh demo [--serve] [--clean]   the whole pipeline on embedded defaults:
#                                    a moto S3/SQS server on 127.0.0.1, a sample bag restored
#                                    from DEEP_ARCHIVE, sqs_scheduled_dag run end to end, and a
#                                    summary. --serve: leave the UI and scheduler running against
#                                    the moto server. --clean: stop and remove what the demo made.
#   ./local-airflow.sh -r            reset the metadata database (deletes every DAG run)
#   ./local-airflow.sh -a USER PASSWORD EMAIL [ROLE]
#                                    create (or update) a user of the UI: admin (default), op,
#                                    user or viewer (what each may do: docs/operations.md)
#   ./local-airflow.sh -w -u | -w -d start | stop the web UI and REST API (airflow api-server)
#   ./local-airflow.sh -s -u | -s -d start | stop the scheduler, dag-processor and triggerer
#   ./local-airflow.sh stop          stop every service this script started (and the demo's moto)
#   ./local-airflow.sh status        show which services run, their pids, ports and logs
#   ./local-airflow.sh logs          print where the logs are
#   ./local-airflow.sh -h            this help
#
# Environment (all optional):
#   AIRFLOW_HOME          default: <checkout>/airflow-home (git-ignored)
#   AIRFLOW_PORT          UI/API port, default 8080;  AIRFLOW_HOST  bind address, default 127.0.0.1
#   WORKER_LOG_PORT       task log server port, default 8793; TRIGGER_LOG_PORT default 8794
#   DEMO_DIR              default: <checkout>/demo (git-ignored);  DEMO_MOTO_PORT default 5077
#   DEMO_WORKS            sample works restored by the demo, default 1
#   GLACIER_SYNC_ENV_FILE a file of `export GLACIER_SYNC_...=...` lines read before services
#                         start (the demo's --serve sets it to the moto settings)
#   GLACIER_SYNC_CONFIG   the pipeline's TOML config (docs/configuration.md)
#   AIRFLOW_DB_URL        Airflow's metadata database instead of SQLite in AIRFLOW_HOME, e.g.
#                         postgresql+psycopg2://USER:PASSWORD@127.0.0.1:5432/DB (as the Compose
#                         stack has it: parallel tasks do not queue for one file lock); -r
#                         resets that database
#
# Users: the UI uses Airflow 3's SimpleAuthManager (no FAB provider): users are listed in
# $AIRFLOW_HOME/local-users.txt and their passwords in $AIRFLOW_HOME/local-passwords.json
# (mode 0600). Without -a, an "admin" user with a generated password is created.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export AIRFLOW_HOME=${AIRFLOW_HOME:-$repo/airflow-home}
AIRFLOW_PORT=${AIRFLOW_PORT:-8080}
AIRFLOW_HOST=${AIRFLOW_HOST:-127.0.0.1}
DEMO_DIR=${DEMO_DIR:-$repo/demo}
DEMO_MOTO_PORT=${DEMO_MOTO_PORT:-5077}
DEMO_WORKS=${DEMO_WORKS:-1}
run_dir=$AIRFLOW_HOME/run
service_logs=$AIRFLOW_HOME/logs/services
users_file=$AIRFLOW_HOME/local-users.txt
passwords_file=$AIRFLOW_HOME/local-passwords.json
secrets_file=$AIRFLOW_HOME/local-secrets.env
venv=""

me=local-airflow.sh
# shellcheck source=scripts/shell-common.sh
source "$repo/scripts/shell-common.sh"   # usage, say
die() { fail "$@"; }   # this script's errors all exit 1

ensure_venv() {
    [ -n "$venv" ] || venv=$(bash "$repo/scripts/ensure-venv.sh")
}

# tool SUBCOMMAND ARG...: deploytools of this checkout (after ensure_venv).
tool() { PYTHONPATH="$repo/src" "$venv/bin/python" -m deploytools "$@"; }

# The secrets every component must share; generated once per AIRFLOW_HOME, never printed.
ensure_secrets() {
    mkdir -p "$AIRFLOW_HOME" "$run_dir" "$service_logs"
    if [ ! -s "$secrets_file" ]; then
        local fernet_key jwt_secret
        fernet_key=$(tool fernet-key)
        jwt_secret=$(tool secret 48)
        (umask 077
         printf "export AIRFLOW__CORE__FERNET_KEY='%s'\nexport AIRFLOW__API_AUTH__JWT_SECRET='%s'\n" \
             "$fernet_key" "$jwt_secret" > "$secrets_file")
    fi
    # shellcheck disable=SC1090
    . "$secrets_file"
}

ensure_users() {
    if [ ! -s "$users_file" ]; then
        add_user admin "$(tool secret 12)" "admin@localhost" admin quiet
    fi
}

airflow_env() {
    ensure_venv
    ensure_secrets
    export AIRFLOW__CORE__DAGS_FOLDER=$repo/dags
    export AIRFLOW__CORE__LOAD_EXAMPLES=False
    export AIRFLOW__CORE__EXECUTOR=LocalExecutor
    if [ -n "${AIRFLOW_DB_URL:-}" ]; then
        export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=$AIRFLOW_DB_URL
    fi
    export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$passwords_file
    export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$AIRFLOW_PORT/execution/
    export AIRFLOW__API__BASE_URL=http://127.0.0.1:$AIRFLOW_PORT
    export AIRFLOW__API__PORT=$AIRFLOW_PORT
    export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=${WORKER_LOG_PORT:-8793}
    export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=${TRIGGER_LOG_PORT:-8794}
    export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=${DAG_REFRESH_SECONDS:-30}
    export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False
    if [ -n "${GLACIER_SYNC_ENV_FILE:-}" ]; then
        [ -f "$GLACIER_SYNC_ENV_FILE" ] || die "GLACIER_SYNC_ENV_FILE $GLACIER_SYNC_ENV_FILE does not exist"
        # shellcheck disable=SC1090
        . "$GLACIER_SYNC_ENV_FILE"
    fi
    ensure_users
    if [ -s "$users_file" ]; then
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=$(paste -sd, "$users_file")
        export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS
    fi
}

# db_name: the metadata database as it may be printed (no password).
db_name() {
    if [ -n "${AIRFLOW_DB_URL:-}" ]; then
        printf '%s' "$AIRFLOW_DB_URL" | sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#'
    else
        printf '%s' "$AIRFLOW_HOME/airflow.db"
    fi
}

# ensure_db: create (SQLite) or upgrade (AIRFLOW_DB_URL: it may be shared or older) the
# metadata database.
ensure_db() {
    if [ -n "${AIRFLOW_DB_URL:-}" ] || [ ! -f "$AIRFLOW_HOME/airflow.db" ]; then
        say "migrating the metadata database $(db_name)"
        "$venv/bin/airflow" db migrate > "$service_logs/db-migrate.log" 2>&1 \
            || die "airflow db migrate of $(db_name) failed; see $service_logs/db-migrate.log"
    fi
}

reset_db() {
    airflow_env
    running_any && die "stop the services first: ./local-airflow.sh stop"
    say "resetting the metadata database $(db_name)"
    if [ -n "${AIRFLOW_DB_URL:-}" ]; then
        "$venv/bin/airflow" db reset --yes > "$service_logs/db-reset.log" 2>&1 \
            || die "airflow db reset of $(db_name) failed; see $service_logs/db-reset.log"
    else
        rm -f "$AIRFLOW_HOME/airflow.db"
        ensure_db
    fi
}

# add_user USER PASSWORD EMAIL [ROLE [quiet]]: a user of the SimpleAuthManager (an admin unless
# ROLE says otherwise).
add_user() {
    local user=$1 password=$2 email=$3 role=${4:-admin}
    [[ $user =~ ^[A-Za-z0-9_.@-]+$ ]] || die "user name '$user': use letters, digits, _ . @ -"
    [ -n "$password" ] || die "give a non-empty password"
    case $role in
        admin|op|user|viewer) ;;
        *) die "role '$role': use admin, op, user or viewer" ;;
    esac
    mkdir -p "$AIRFLOW_HOME"
    touch "$users_file"
    grep -v "^$user:" "$users_file" > "$users_file.tmp" || true
    echo "$user:$role" >> "$users_file.tmp"
    mv "$users_file.tmp" "$users_file"
    printf '%s' "$password" | tool set-password "$passwords_file" "$user"   # stdin, not argv
    chmod 600 "$passwords_file"
    echo "$user $email" >> "$AIRFLOW_HOME/local-user-emails.txt"
    if [ "${5:-}" = quiet ]; then
        say "created UI user '$user' (password in $passwords_file)"
    else
        say "UI user '$user' ($email) has the role $role; restart the UI (-w -d, -w -u) to apply"
    fi
}

pid_of() { [ -f "$run_dir/$1.pid" ] && cat "$run_dir/$1.pid" || true; }

# is_running NAME: its recorded process lives (a zombie, killed but not yet reaped, does not).
is_running() {
    local pid state
    pid=$(pid_of "$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 0
    [ "$state" != Z ]
}

running_any() {
    local name
    for name in api-server scheduler dag-processor triggerer moto; do
        is_running "$name" && return 0
    done
    return 1
}

# start_service NAME LOG COMMAND...: in its own session; the pid file holds the session id.
start_service() {
    local name=$1 log=$2
    shift 2
    if is_running "$name"; then
        say "$name already runs (pid $(pid_of "$name"))"
        return 0
    fi
    mkdir -p "$run_dir" "$(dirname "$log")"
    setsid "$@" >> "$log" 2>&1 < /dev/null &
    echo $! > "$run_dir/$name.pid"
    say "started $name (pid $!, log $log)"
}

# stop_services NAME...: TERM to each service's whole process group by its recorded pid, all at
# once (each may take seconds to shut down), then KILL what still runs after 30 s.
stop_services() {
    local name pid live=()
    for name in "$@"; do
        pid=$(pid_of "$name")
        if [ -n "$pid" ] && kill -0 -- "-$pid" 2>/dev/null; then
            kill -TERM -- "-$pid" 2>/dev/null || true
            live+=("$name:$pid")
        fi
    done
    for _ in $(seq 60); do
        any_group_alive "${live[@]}" || break
        sleep 0.5
    done
    local killed=()
    for name in "${live[@]}"; do
        if any_group_alive "$name"; then
            kill -KILL -- "-${name#*:}" 2>/dev/null || true
            killed+=("$name")
            say "killed ${name%%:*} (pid ${name#*:}): still running 30 s after TERM"
        else
            say "stopped ${name%%:*} (pid ${name#*:})"
        fi
    done
    # A killed process is gone only once the kernel has torn it down: stop returns after that.
    for _ in $(seq 40); do
        any_group_alive "${killed[@]}" || break
        sleep 0.25
    done
    for name in "$@"; do
        rm -f "$run_dir/$name.pid"
    done
}

# any_group_alive NAME:PID...: one of these process groups still has a process.
any_group_alive() {
    local entry
    for entry in "$@"; do
        kill -0 -- "-${entry#*:}" 2>/dev/null && return 0
    done
    return 1
}

# port_free PORT: nothing listens on 127.0.0.1:PORT (TIME_WAIT leftovers do not count).
port_free() { tool port-free "$1"; }

# wait_http URL SERVICE LOG [SECONDS]: until URL answers; fail early if the service died.
wait_http() {
    local url=$1 name=$2 log=$3 seconds=${4:-120}
    tool wait-url "$url" "$seconds" --pid "$(pid_of "$name")" && return 0
    is_running "$name" || { tail -n 20 "$log" >&2; die "$name exited; see $log"; }
    die "$name did not answer at $url within ${seconds}s; see $log"
}

web_up() {
    airflow_env
    ensure_db
    if ! is_running api-server && ! port_free "$AIRFLOW_PORT"; then
        die "port $AIRFLOW_PORT is in use; set AIRFLOW_PORT to a free port"
    fi
    start_service api-server "$service_logs/api-server.log" \
        "$venv/bin/airflow" api-server --host "$AIRFLOW_HOST" --port "$AIRFLOW_PORT"
    wait_http "http://127.0.0.1:$AIRFLOW_PORT/api/v2/monitor/health" api-server \
        "$service_logs/api-server.log"
    say "UI: http://127.0.0.1:$AIRFLOW_PORT  (users: $(cut -d: -f1 "$users_file" | paste -sd' '); passwords in $passwords_file)"
}

scheduler_up() {
    airflow_env
    ensure_db
    start_service scheduler "$service_logs/scheduler.log" "$venv/bin/airflow" scheduler
    start_service dag-processor "$service_logs/dag-processor.log" "$venv/bin/airflow" dag-processor
    start_service triggerer "$service_logs/triggerer.log" "$venv/bin/airflow" triggerer
}

scheduler_down() { stop_services scheduler dag-processor triggerer; }

stop_all() { stop_services api-server scheduler dag-processor triggerer moto; }

status() {
    local name
    for name in api-server scheduler dag-processor triggerer moto; do
        if is_running "$name"; then
            printf '%-14s running  pid %s\n' "$name" "$(pid_of "$name")"
        else
            printf '%-14s stopped\n' "$name"
        fi
    done
    echo "AIRFLOW_HOME   $AIRFLOW_HOME"
    echo "UI             http://127.0.0.1:$AIRFLOW_PORT"
    echo "logs           $service_logs (services), $AIRFLOW_HOME/logs (task logs)"
}

demo_clean() {
    stop_all
    rm -rf "$DEMO_DIR"
    say "removed $DEMO_DIR (the metadata database in $AIRFLOW_HOME is kept; -r resets it)"
}

demo() {
    local serve=0 clean=0 arg
    for arg in "$@"; do
        case "$arg" in
            --serve) serve=1 ;;
            --clean) clean=1 ;;
            *) die "demo: unknown option $arg (use --serve or --clean)" ;;
        esac
    done
    if [ "$clean" -eq 1 ]; then
        demo_clean
        return 0
    fi
    local started=$SECONDS step=""
    trap 'status=$?; [ "$status" -eq 0 ] || echo "local-airflow.sh: demo failed at step: $step (./local-airflow.sh stop stops what it started)" >&2' EXIT
    step="set up the Python environment"
    say "1/6 $step"
    ensure_venv
    mkdir -p "$DEMO_DIR"
    step="start the moto S3/SQS server on 127.0.0.1:$DEMO_MOTO_PORT"
    say "2/6 $step"
    if ! is_running moto && ! port_free "$DEMO_MOTO_PORT"; then
        die "port $DEMO_MOTO_PORT is in use; set DEMO_MOTO_PORT to a free port"
    fi
    start_service moto "$DEMO_DIR/moto.log" \
        "$venv/bin/moto_server" -H 127.0.0.1 -p "$DEMO_MOTO_PORT"
    wait_http "http://127.0.0.1:$DEMO_MOTO_PORT/moto-api/" moto "$DEMO_DIR/moto.log" 60
    step="create bucket, queues and notification; upload and restore the sample bag"
    say "3/6 $step"
    "$venv/bin/python" "$repo/tools/demo_world.py" setup --endpoint "http://127.0.0.1:$DEMO_MOTO_PORT" \
        --state-dir "$DEMO_DIR" --works "$DEMO_WORKS" --env-file "$DEMO_DIR/glacier-sync.env"
    export GLACIER_SYNC_ENV_FILE=$DEMO_DIR/glacier-sync.env
    step="prepare the Airflow metadata database"
    say "4/6 $step"
    airflow_env
    ensure_db
    step="run sqs_scheduled_dag end to end (dag.test)"
    say "5/6 $step (log: $DEMO_DIR/dag-test.log)"
    "$venv/bin/python" "$repo/dags/sqs_scheduled_dag.py" > "$DEMO_DIR/dag-test.log" 2>&1 \
        || { tail -n 30 "$DEMO_DIR/dag-test.log" >&2; false; }
    grep -q "state=success" "$DEMO_DIR/dag-test.log" \
        || { grep -E "ERROR|error|Traceback" "$DEMO_DIR/dag-test.log" | tail -n 20 >&2; false; }
    step="check the archive and the progress database"
    say "6/6 $step"
    "$venv/bin/python" "$repo/tools/demo_world.py" summary --data-root "$DEMO_DIR/data"
    trap - EXIT
    say "demo finished in $((SECONDS - started)) s"
    if [ "$serve" -eq 1 ]; then
        web_up
        scheduler_up
        say "open http://127.0.0.1:$AIRFLOW_PORT and log in as admin (password: $(tool get-password "$passwords_file" admin 2>/dev/null || echo "see -a"))"
        say "sqs_scheduled_dag runs against the moto server; restore more with:"
        echo "    $venv/bin/python $repo/tools/demo_world.py setup --endpoint http://127.0.0.1:$DEMO_MOTO_PORT --state-dir $DEMO_DIR --env-file $DEMO_DIR/glacier-sync.env"
        say "stop everything with: ./local-airflow.sh stop"
    else
        stop_services moto
    fi
}

main() {
    [ $# -gt 0 ] || { usage; exit 1; }
    case "$1" in
        -h|--help|help) usage ;;
        demo) shift; demo "$@" ;;
        stop) stop_all ;;
        status) status ;;
        logs) echo "$service_logs (services); $AIRFLOW_HOME/logs (task logs)" ;;
        -r) reset_db ;;
        -a)
            [ $# -eq 4 ] || [ $# -eq 5 ] || die "-a needs USER PASSWORD EMAIL [ROLE]"
            ensure_venv
            add_user "$2" "$3" "$4" "${5:-admin}"
            ;;
        -w|-s)
            [ $# -eq 2 ] || die "$1 needs -u (start) or -d (stop)"
            case "$1$2" in
                -w-u) web_up ;;
                -w-d) stop_services api-server ;;
                -s-u) scheduler_up ;;
                -s-d) scheduler_down ;;
                *) die "$1 needs -u (start) or -d (stop), not $2" ;;
            esac
            ;;
        *) usage >&2; die "unknown command $1" ;;
    esac
}

main "$@"
