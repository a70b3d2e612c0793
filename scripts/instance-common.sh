# instance-common.sh - what scripts/stack-admin.sh and scripts/rotate-secrets.sh share about a
# deployed instance; sourced, never run. The script sets `dest` (the instance folder) and sources
# shell-common.sh (fail) first.

need_docker() {
    command -v docker >/dev/null && docker info >/dev/null 2>&1 \
        || fail "the Docker engine is unreachable from here (is dockerd running, are you in the docker group?)"
}

# env_value NAME: the last value of NAME in the instance's .env.
env_value() { sed -n "s/^$1=//p" "$dest/.env" | tail -n 1; }

# compose ARG...: Compose in the instance folder (its .env names the project).
compose() {
    if docker compose version >/dev/null 2>&1; then
        (cd "$dest" && docker compose "$@")
    elif command -v docker-compose >/dev/null 2>&1; then
        (cd "$dest" && docker-compose "$@")
    else
        fail "neither 'docker compose' nor 'docker-compose' is installed"
    fi
}

# running SERVICE: a container of the service runs (the first, for a scaled service).
running() {
    local id
    id=$(compose ps -q "$1" 2>/dev/null | head -n 1) && [ -n "$id" ] \
        && [ "$(docker inspect -f '{{.State.Running}}' "$id" 2>/dev/null)" = true ]
}
