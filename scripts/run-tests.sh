#!/usr/bin/env bash
# The test command. With no option: set up everything (the locked virtual environment, the
# system packages and the Docker engine) and run the whole suite: lint, then every tier (unit,
# integration, airflow, services, docker; see tests/tiers.py; the Compose module in a stream
# of its own beside the others, run_whole_suite below), the 30 slowest tests printed.
#
#   scripts/run-tests.sh                     everything (what CI runs)
#   scripts/run-tests.sh --fast              lint, then the unit and integration tiers only
#   scripts/run-tests.sh --tier airflow      lint, then one tier (unit, integration, airflow,
#                                            services or docker); repeat for several
#   scripts/run-tests.sh tests/test_bags.py  any other argument goes to pytest
#   scripts/run-tests.sh --clean             remove what a killed run left, then stop
#
# Every run works in a temporary folder of its own (TMPDIR), removed at the end however the
# run ends; scripts/clean-test-leftovers.sh removes what a run killed with -9 left.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tiers=()
pytest_args=()
# The whole suite's background stream (its docker and services tests): the Compose module, the
# test that removes Compose projects (which must not run beside it), then the wheelhouse build
# and the Celery worker's test, moved here to even the two streams' lengths.
COMPOSE_STREAM=(
    tests/test_docker_deploy.py
    tests/test_leftovers.py
    tests/test_deploy.py::test_build_folder_holds_scripts_config_and_resolved_requirements
    tests/test_celery_setup.py
)
compose_pid=
needs_machine=1

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --fast) tiers+=(unit integration) ;;
            --tier)
                [ $# -ge 2 ] || { echo "run-tests: --tier needs a tier (unit, integration, airflow, services, docker)" >&2; exit 2; }
                tiers+=("$2")
                shift ;;
            --clean) exec bash "$repo/scripts/clean-test-leftovers.sh" ;;
            -h|--help) sed -n '2,15s/^# \{0,1\}//p' "$0"; exit 0 ;;
            *) pytest_args+=("$1") ;;
        esac
        shift
    done
    local tier
    for tier in "${tiers[@]}"; do
        case $tier in
            unit|integration|airflow|services|docker) ;;
            *) echo "run-tests: unknown tier '$tier'; use unit, integration, airflow, services or docker" >&2; exit 2 ;;
        esac
    done
    # The system packages and Docker serve only the services and docker tiers.
    if [ ${#tiers[@]} -gt 0 ] && ! printf '%s\n' "${tiers[@]}" | grep -qxE 'services|docker'; then
        needs_machine=0
    fi
}

# A folder of this run's own for everything temporary, removed (mounts first) when it ends.
isolate_tmp() {
    run_tmp=$(mktemp -d "${TMPDIR:-/tmp}/bdrc-tests.XXXXXX")
    echo $$ > "$run_tmp/.owner"
    trap remove_run_tmp EXIT
    export TMPDIR=$run_tmp BDRC_TEST_OWNER=$$
}

remove_run_tmp() {
    local mount
    for mount in $(findmnt -rn -o TARGET | grep -F "$run_tmp/" | sort -r); do
        umount -l "$mount" 2>/dev/null || true
    done
    rm -rf "$run_tmp"
}

marker_expression() {
    local expr="" tier
    for tier in "$@"; do expr="${expr:+$expr or }$tier"; done
    echo "$expr"
}

# pytest on the tiers given ($1: "parallel" or "serial", then the tiers; none: all tests).
# The unit and integration tiers run in two workers a core (pytest-xdist: each worker its own
# moto server and folders; many of those tests wait on a subprocess or an SQS visibility
# timeout, so one a core leaves cores idle); the others share fixed resources (local services,
# the Compose stack) and run one test at a time. TEST_WORKERS sets the number of workers.
run_pytest() {
    local how=$1 selection=() workers=()
    shift
    [ $# -gt 0 ] && selection=(-m "$(marker_expression "$@")")
    [ "$how" = parallel ] && workers=(-n "${TEST_WORKERS:-$(( $(nproc) * 2 ))}" --dist worksteal)
    echo "== pytest ${selection[*]} ${workers[*]}"
    "$venv/bin/python" -m pytest -ra --durations=30 "${selection[@]}" "${workers[@]}" \
        "${pytest_args[@]}"
}

# The whole suite in two streams side by side. The Compose stacks' module (and the leftover
# check that removes Compose projects, which must not run beside it) waits on containers most of
# its 15 minutes, so it runs in the background; the other serial tests, then the fast tiers, run
# in the foreground: the serial tests, which wait on Airflow's processes much of the time, beside
# the image builds (which take the cores), the fast tiers (which take both cores) once the stacks
# are up and mostly wait. The background stream's output is printed when both have ended.
run_whole_suite() {
    local status=0 compose_status=0
    compose_log="$run_tmp/compose-stream.log"
    mkdir "$run_tmp/compose-stream"
    set -m  # its own process group, SIGINT not ignored: stop_compose_stream can interrupt it
    (
        export TMPDIR=$run_tmp/compose-stream
        pytest_args=("${COMPOSE_STREAM[@]}")
        run_pytest serial docker services
    ) < /dev/null > "$compose_log" 2>&1 &
    compose_pid=$!
    set +m
    trap 'stop_compose_stream; remove_run_tmp' EXIT
    local item
    for item in "${COMPOSE_STREAM[@]}"; do
        case $item in
            *::*) pytest_args+=(--deselect "$item") ;;
            *) pytest_args+=(--ignore "$item") ;;
        esac
    done
    run_pytest serial airflow services docker || status=$?
    pytest_args=()
    run_pytest parallel unit integration || { local s=$?; [ "$status" -ne 0 ] || status=$s; }
    wait "$compose_pid" || compose_status=$?
    compose_pid=
    echo "== the Compose stream (ran beside the above): ${COMPOSE_STREAM[*]}"
    cat "$compose_log"
    [ "$status" -ne 0 ] || status=$compose_status
    return "$status"
}

# On an early exit (Ctrl-C, a failure of this script): interrupt the background stream as
# Ctrl-C would (its fixtures take their stacks down), wait for it, and show what it printed.
stop_compose_stream() {
    trap '' INT TERM  # a second Ctrl-C must not cut the clean-up short
    [ -n "${compose_pid:-}" ] || return 0
    kill -INT -- "-$compose_pid" 2>/dev/null || true
    wait "$compose_pid" 2>/dev/null || true
    echo "== the Compose stream, interrupted"
    tail -n 40 "$compose_log" 2>/dev/null || true
}

# The system packages and the Docker engine (apt, one after the other) while the virtual
# environment is made beside them (on a fresh machine each takes about a minute). Sets venv.
prepare_machine_beside_venv() {
    local out status=0
    out=$(mktemp -d "${TMPDIR:-/tmp}/bdrc-venv.XXXXXX")
    echo $$ > "$out/.owner"  # a run killed with -9 leaves it: clean-test-leftovers.sh knows it
    # In a session of its own (pip and uv under it), stopped whole on Ctrl-C or a kill.
    setsid bash scripts/ensure-venv.sh > "$out/path" 2> "$out/log" &
    local venv_pid=$!
    trap 'kill -TERM -- "-$venv_pid" 2>/dev/null; rm -rf "$out"; exit 130' INT TERM
    bash scripts/install-system-packages.sh && bash scripts/prepare-docker.sh || status=$?
    wait "$venv_pid" || { cat "$out/log" >&2; rm -rf "$out"; exit 1; }
    trap - INT TERM
    cat "$out/log" >&2
    venv=$(cat "$out/path")
    rm -rf "$out"
    [ "$status" -eq 0 ] || exit "$status"
}

only_fast_tiers() {
    [ ${#tiers[@]} -gt 0 ] && ! printf '%s\n' "${tiers[@]}" | grep -qvxE 'unit|integration'
}

main() {
    parse_args "$@"
    cd "$repo"
    if [ "$needs_machine" = 1 ]; then
        prepare_machine_beside_venv
    else
        venv=$(bash scripts/ensure-venv.sh)
    fi

    echo "== ruff"
    "$venv/bin/ruff" check .
    "$venv/bin/ruff" format --check .

    isolate_tmp
    # Ctrl-C or a kill: stop once the running pytest has ended (the EXIT trap cleans up), rather
    # than going on to the next tier.
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local status=0
    if [ ${#tiers[@]} -eq 0 ] && [ ${#pytest_args[@]} -eq 0 ]; then
        run_whole_suite || status=$?
    elif only_fast_tiers; then
        run_pytest parallel "${tiers[@]}" || status=$?
    else
        run_pytest serial "${tiers[@]}" || status=$?
    fi
    if [ "$status" -eq 5 ]; then
        echo "run-tests: pytest collected no test" >&2
    fi
    return "$status"
}

main "$@"
