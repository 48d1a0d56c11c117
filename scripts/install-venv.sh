#!/usr/bin/env bash
# Creates the project virtualenv at .venv with Debian's /usr/bin/python3 (the
# interpreter PL/Python embeds) and installs this package with every extra
# (pyproject.toml) at the exact versions of constraints.txt. Never touches the
# system Python. Idempotent: skipped when none of those files has changed since
# the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${THANOSQL_VENV:-.venv}
PY=/usr/bin/python3
if [ ! -x "$VENV/bin/python" ]; then
  $PY -m venv "$VENV"
fi
stamp="$VENV/.thanosql-installed"
want=$(cat constraints.txt requirements-lint.txt pyproject.toml setup.py thanosql_pg/_version.py thanosql_pg/proxy/relay.c | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "install-venv: up to date"
  exit 0
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -c constraints.txt -e '.[server,proxy,notebook,test,lint]'
# pgspot (make lint) pins an older pglast than thanosql_pg needs: it gets its own venv.
LINT_VENV=${THANOSQL_LINT_VENV:-.venv-lint}
[ -x "$LINT_VENV/bin/python" ] || $PY -m venv "$LINT_VENV"
"$LINT_VENV/bin/pip" install -q -r requirements-lint.txt
echo "$want" > "$stamp"
echo "install-venv: installed into $VENV (and pgspot into $LINT_VENV)"
