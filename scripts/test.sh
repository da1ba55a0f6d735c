#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (the test extras,
# Debian's Chromium for the browser tests), makes sure the local PostgreSQL is
# up, then runs pytest (two workers, then the browser tests). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  python3 -m venv .venv
  PY=.venv/bin/python
fi

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "test.sh: installing Debian's chromium for the browser tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "test.sh: chromium is missing; run 'sudo apt-get install chromium'" >&2
    exit 1
  fi
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "test.sh: starting the local PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

"$PY" -m pip install -q -e '.[test]'
if [ "$#" -gt 0 ] && [[ "$1" != -* ]]; then
  # Named tests: one plain run.
  exec "$PY" -m pytest "$@"
fi
# The suite in two processes, a file to each at a time (the tests wait on events, never on the
# machine's speed), then the browser tests on their own: Playwright's sync fixtures would break
# async tests run after them in the same process (pytest-playwright #167).
"$PY" -m pytest -n "${GATEWAY_TEST_WORKERS:-2}" --dist loadfile -m "not browser" "$@"
"$PY" -m pytest -m browser "$@"
