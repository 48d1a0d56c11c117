#!/usr/bin/env bash
# Development only: re-apply the extension's idempotent SQL (functions, policies,
# grants) to a database already at this release, after editing extension/idempotent/.
# A released database is changed only through ALTER EXTENSION UPDATE. Functions it
# creates for the first time are not members of the extension: recreate the extension
# (DROP EXTENSION thanosql CASCADE; CREATE EXTENSION thanosql CASCADE) for those.
set -euo pipefail
cd "$(dirname "$0")/.."
dsn=${1:?usage: scripts/dev_reload_sql.sh DSN}
ver=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' thanosql_pg/_version.py)
libdir=$(/usr/lib/postgresql/15/bin/pg_config --pkglibdir)
{ echo "BEGIN;"; cat extension/prelude.sql extension/idempotent/*.sql; echo "COMMIT;"; } \
  | sed -e "s|@VERSION@|$ver|g" -e "s|MODULE_PATHNAME|$libdir/thanosql|g" \
  | psql -X -q -v ON_ERROR_STOP=1 "$dsn"
