#!/usr/bin/env bash
# Find, and remove, what a test or benchmark run left on this machine when it was killed:
# processes it started (marked BDRC_TEST_OWNER=<pid of the run> in their environment) whose
# run is gone, its temporary folders (tmpfs mounts under them unmounted first), the Docker
# Compose projects, containers, volumes, networks and images the tests and benchmarks make.
# The stand-in base images (bdrc-test/*, a build cache) are kept unless --all is given.
#
#   scripts/clean-test-leftovers.sh           remove the leftovers
#   scripts/clean-test-leftovers.sh --check   list them and exit 1 if there are any; remove nothing
#   scripts/clean-test-leftovers.sh --all     remove the build cache as well
#
# Where: TMPDIR (default /tmp) for the runs' folders; LEFTOVER_ROOTS (space-separated) overrides
# the benchmark folders checked; LEFTOVER_KINDS (default "processes folders shaping docker")
# the kinds looked at (the tests point each at their own, and never at a stream running beside).
set -euo pipefail

mode=clean
keep_cache=1
tmp_root=${TMPDIR:-/tmp}
bench_roots=${LEFTOVER_ROOTS-/tmp/bench-large-works /var/tmp/glacier-sync-bench}
project_pattern='^bdrc-(e2e|bench)-'
image_pattern='^bdrc-airflow:(e2e-|bench)'
kinds=" ${LEFTOVER_KINDS:-processes folders shaping docker} "
found=0

usage() { sed -n '2,14s/^# \{0,1\}//p' "$0"; }

parse_args() {
    for arg in "$@"; do
        case $arg in
            --check) mode=check ;;
            --all) keep_cache=0 ;;
            -h|--help) usage; exit 0 ;;
            *) echo "clean-test-leftovers: unknown argument $arg (see --help)" >&2; exit 2 ;;
        esac
    done
}

# report KIND NAME: say what was found (and, unless checking, that it goes).
report() {
    found=$((found + 1))
    if [ "$mode" = check ]; then echo "left over: $1 $2"; else echo "removing $1 $2"; fi
}

wanted() { [[ $kinds == *" $1 "* ]]; }

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# The pids of processes marked by a run (BDRC_TEST_OWNER=<its pid>) that is no longer alive.
orphan_processes() {
    local file pid owner
    for file in $(grep -lsz '^BDRC_TEST_OWNER=' /proc/[0-9]*/environ); do
        pid=${file#/proc/}
        pid=${pid%/environ}
        [ "$pid" = $$ ] && continue
        owner=$(grep -asz '^BDRC_TEST_OWNER=' "$file" | tr -d '\0' | cut -d= -f2)
        if [ -n "$owner" ] && ! alive "$owner"; then echo "$pid"; fi
    done
    return 0
}

clean_processes() {
    local pids
    pids=$(orphan_processes)
    [ -z "$pids" ] && return 0
    for pid in $pids; do
        report process "$pid $( { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | cut -c1-100)"
    done
    # shellcheck disable=SC2086
    [ "$mode" = clean ] && kill -9 $pids 2>/dev/null || true
}

# Folders of runs: a run folder (bdrc-tests.*, or bdrc-venv.* where run-tests.sh waits for the
# virtual environment) whose owner is gone, pytest's own base folder, and the benchmarks' work
# folders.
leftover_folders() {
    local folder owner
    for folder in "$tmp_root"/bdrc-tests.* "$tmp_root"/bdrc-venv.*; do
        [ -d "$folder" ] || continue
        owner=$(cat "$folder/.owner" 2>/dev/null || true)
        alive "$owner" || echo "$folder"
    done
    # pytest's numbered base folders hold a .lock with the pid of the run using them.
    for folder in "$tmp_root/pytest-of-$(id -un)"/pytest-[0-9]*; do
        [ -d "$folder" ] || continue
        owner=$(cat "$folder/.lock" 2>/dev/null || true)
        alive "$owner" || echo "$folder"
    done
    for folder in $bench_roots; do
        if [ -e "$folder" ]; then echo "$folder"; fi
    done
    return 0
}

# pytest's base folder once no run's folder is left in it.
remove_empty_pytest_root() {
    local root
    root="$tmp_root/pytest-of-$(id -un)"
    [ -d "$root" ] || return 0
    compgen -G "$root/pytest-[0-9]*" >/dev/null && return 0
    rm -rf "$root"
}

clean_folders() {
    local folder mount
    while read -r folder; do
        [ -n "$folder" ] || continue
        report folder "$folder"
        [ "$mode" = clean ] || continue
        # Deepest mounts first (tmpfs made by the disk-full tests).
        for mount in $(findmnt -rn -o TARGET | grep -F "$folder/" | sort -r); do
            umount -l "$mount" 2>/dev/null || true
        done
        rm -rf "$folder"
    done < <(leftover_folders)
    [ "$mode" = check ] || remove_empty_pytest_root
}

have_docker() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

clean_docker() {
    have_docker || return 0
    local id name
    while read -r id name; do
        [ -n "$id" ] || continue
        report container "$name"
        [ "$mode" = clean ] && docker rm -f -v "$id" >/dev/null
    done < <(docker ps -a --format '{{.ID}} {{.Names}} {{.Label "com.docker.compose.project"}}' \
        | awk -v p="$project_pattern" '$3 ~ p {print $1, $2}')
    while read -r name; do
        [ -n "$name" ] || continue
        report volume "$name"
        [ "$mode" = clean ] && docker volume rm -f "$name" >/dev/null
    done < <(docker volume ls -q | grep -E "$project_pattern" || true)
    while read -r name; do
        [ -n "$name" ] || continue
        report network "$name"
        [ "$mode" = clean ] && docker network rm "$name" >/dev/null
    done < <(docker network ls --format '{{.Name}}' | grep -E "$project_pattern" || true)
    clean_images
}

clean_images() {
    local pattern=$image_pattern name
    [ "$keep_cache" = 0 ] && pattern="$image_pattern|^bdrc-test/"
    while read -r name; do
        [ -n "$name" ] || continue
        report image "$name"
        [ "$mode" = clean ] && docker rmi -f "$name" >/dev/null
    done < <(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E "$pattern" || true)
    while read -r id; do
        [ -n "$id" ] || continue
        report image "$id (untagged)"
        [ "$mode" = clean ] && docker rmi -f "$id" >/dev/null 2>&1
    done < <(docker images -q --filter dangling=true)
    if [ "$keep_cache" = 0 ] && [ -d /var/tmp/bdrc-test-images ]; then
        report folder /var/tmp/bdrc-test-images
        [ "$mode" = clean ] && rm -rf /var/tmp/bdrc-test-images
    fi
    return 0
}

# The link a killed bench_large_works.py --link-mbps left shaped on loopback (the root
# queueing discipline of benchmarks/link_shaping.py, handle bdc0:; nothing else is touched).
clean_link_shaping() {
    command -v tc >/dev/null || return 0
    tc qdisc show dev lo 2>/dev/null | grep -q '^qdisc htb bdc0:' || return 0
    report shaping "of the loopback link (tc qdisc bdc0: on lo)"
    if [ "$mode" = clean ] && ! tc qdisc del dev lo root handle bdc0: 2>/dev/null; then
        echo "clean-test-leftovers: could not remove the shaping (needs root):" \
            "tc qdisc del dev lo root handle bdc0:" >&2
    fi
    return 0
}

check_kinds() {
    local kind
    for kind in $kinds; do
        case $kind in
            processes|folders|shaping|docker) ;;
            *) echo "clean-test-leftovers: unknown kind '$kind' in LEFTOVER_KINDS;" \
                "use processes, folders, shaping or docker" >&2; exit 2 ;;
        esac
    done
}

main() {
    parse_args "$@"
    check_kinds
    wanted processes && clean_processes
    wanted folders && clean_folders
    wanted shaping && clean_link_shaping
    wanted docker && clean_docker
    if [ "$mode" = check ] && [ "$found" -gt 0 ]; then
        echo "clean-test-leftovers: $found thing(s) left by a test or benchmark run;" \
            "remove them with scripts/clean-test-leftovers.sh" >&2
        exit 1
    fi
    [ "$found" -eq 0 ] && echo "clean-test-leftovers: nothing left over"
    return 0
}

main "$@"
