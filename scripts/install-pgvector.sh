#!/usr/bin/env bash
# Installs pgvector for PostgreSQL $PG_MAJOR: Debian's binary package when the
# distribution has one, otherwise built from Debian's source package (trixie)
# with PGXS. Idempotent.
set -euo pipefail
PGV=${PG_MAJOR:-15}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/$PGV/bin/pg_config}
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
sharedir=$($PG_CONFIG --sharedir)
if [ -f "$sharedir/extension/vector.control" ]; then
  echo "install-pgvector: already installed ($(grep default_version "$sharedir/extension/vector.control"))"
  exit 0
fi
if apt-cache show "postgresql-$PGV-pgvector" >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "postgresql-$PGV-pgvector"
  exit 0
fi
# No binary for this distribution: build Debian's source package.
src=/etc/apt/sources.list.d/thanosql-trixie-src.list
if [ ! -f "$src" ]; then
  echo "deb-src http://deb.debian.org/debian trixie main" | $SUDO tee "$src" >/dev/null
  $SUDO apt-get update -qq
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && apt-get source -qq --download-only pgvector && dpkg-source -x --no-check pgvector_*.dsc pgvector >/dev/null )
make -s -C "$work/pgvector" PG_CONFIG="$PG_CONFIG" OPTFLAGS="" >/dev/null
$SUDO make -s -C "$work/pgvector" PG_CONFIG="$PG_CONFIG" install >/dev/null
echo "install-pgvector: built and installed from Debian source"
