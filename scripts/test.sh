#!/usr/bin/env bash
# The test command: lint, type-check and test poller. Arguments are passed on to pytest.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -m kafka -x     # only the Kafka tests, stop at the first failure
#
# Creates the virtualenv ($VENV, default .venv) if it is missing and (re)installs poller[test,lint]
# into it whenever pyproject.toml is newer than the last install. Every check runs even if an
# earlier one fails, so one run shows all problems; the exit code is non-zero if any failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
STAMP="$VENV/.poller-install-stamp"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

find_python() {
  local candidate
  for candidate in python3.11 python3; do
    # A pyenv shim exists even when its version is not installed, so run it rather than trust PATH.
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  python=$(find_python) || { echo "error: poller needs Python 3.11 or newer (python3.11 or python3) with venv" >&2; exit 1; }
  echo "==> creating $VENV with $python ($("$python" --version 2>&1))"
  "$python" -m venv "$VENV"
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "==> installing poller[test,lint] into $VENV"
  "$VENV/bin/python" -m pip install --quiet --editable '.[test,lint]'
  touch "$STAMP"
fi

status=0
last_rc=0
run() {
  echo "==> $*"
  last_rc=0
  "$@" || last_rc=$?
  if [ "$last_rc" -ne 0 ]; then
    echo "==> FAILED (exit $last_rc): $*" >&2
    status=$last_rc
  fi
}

run "$VENV/bin/ruff" check poller tests handlers bench
run "$VENV/bin/mypy"
# Last, so that a pytest failure decides the exit code: 5 (no tests collected) reaches callers.
run "$VENV/bin/pytest" "$@"
exit "$status"
