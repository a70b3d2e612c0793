#!/usr/bin/env bash
# Set up everything (the locked virtual environment) and run the whole test suite:
# lint, unit tests, integration against a moto server, the progress database on SQLite,
# PostgreSQL and MariaDB, the DAGs under real Airflow, local-airflow.sh (demo, services, REST,
# a headless-chromium browser test), and the Docker Compose deployment end to end.
# Extra arguments go to pytest.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/install-system-packages.sh
bash scripts/prepare-docker.sh
venv=$(bash scripts/ensure-venv.sh)

echo "== ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .

echo "== pytest"
set +e
"$venv/bin/python" -m pytest -ra "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "run-tests: pytest collected no test" >&2
fi
exit "$status"
