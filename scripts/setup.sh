#!/usr/bin/env bash
# One-stop, idempotent setup: Debian packages, pgvector, the virtualenv,
# multicorn2 (optional) and the extension installed into PostgreSQL 15. A second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system.sh
bash scripts/install-pgvector.sh
bash scripts/install-venv.sh
bash scripts/install-multicorn.sh  # optional (the FolderFDW): never fails setup
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
make -s all >/dev/null
$SUDO make -s install >/dev/null
echo "setup: done (extension thanosql installed for $(/usr/lib/postgresql/15/bin/pg_config --version))"
