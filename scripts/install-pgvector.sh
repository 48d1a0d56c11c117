#!/usr/bin/env bash
# Installs pgvector for PostgreSQL $PG_MAJOR: Debian's binary package when the
# distribution has one, otherwise built from Debian's source package (trixie)
# with PGXS. Idempotent.
#
# The machine's apt configuration is never changed: a source package that the
# configured sources do not offer is fetched with a private, throwaway apt
# configuration (its own sources list and package lists in a temporary folder),
# so no entry of ours can conflict with the machine's (e.g. a trixie deb-src
# line with another Signed-By, which makes every `apt-get update` fail), and a
# failed step leaves nothing behind.
#
#   scripts/install-pgvector.sh                 install (no-op when installed)
#   scripts/install-pgvector.sh --fetch-only D  only download and unpack the source into D
#                                               (tests/test_install_scripts.py)
set -euo pipefail
PGV=${PG_MAJOR:-15}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/$PGV/bin/pg_config}
SOURCE_SUITE=${THANOSQL_PGVECTOR_SUITE:-trixie}
MIRROR=${THANOSQL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

fetch_only=""
if [ "${1:-}" = "--fetch-only" ]; then
  fetch_only=${2:?usage: install-pgvector.sh --fetch-only DIR}
fi

# Earlier versions of this script added this file, without Signed-By; remove it
# when it is exactly ours, so that it cannot conflict with the machine's sources.
parts_dir=/etc/apt/sources.list.d/
eval "$(apt-config shell parts_dir Dir::Etc::sourceparts/d)"  # honours APT_CONFIG
legacy="${parts_dir%/}/thanosql-trixie-src.list"
if [ -z "$fetch_only" ] && [ -f "$legacy" ] && \
   [ "$(cat "$legacy")" = "deb-src http://deb.debian.org/debian trixie main" ]; then
  echo "install-pgvector: removing $legacy (added by an earlier thanosql setup)"
  $SUDO rm -f "$legacy"
fi

if [ -z "$fetch_only" ]; then
  sharedir=$($PG_CONFIG --sharedir)
  if [ -f "$sharedir/extension/vector.control" ]; then
    echo "install-pgvector: already installed ($(grep default_version "$sharedir/extension/vector.control"))"
    exit 0
  fi
  if apt-cache show "postgresql-$PGV-pgvector" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "postgresql-$PGV-pgvector"
    exit 0
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# 1. A source the machine already has (any suite that carries pgvector).
if (cd "$work" && apt-get source -qq --download-only pgvector >/dev/null 2>&1); then
  echo "install-pgvector: source package from the configured apt sources"
else
  # 2. A private apt configuration that reads only our one line. The system's
  #    trusted keys still verify the Release files.
  echo "install-pgvector: fetching the source package from $SOURCE_SUITE with a private apt configuration"
  mkdir -p "$work/apt/lists/partial" "$work/apt/parts" "$work/apt/cache/archives/partial" "$work/src"
  echo "deb-src $MIRROR $SOURCE_SUITE main" > "$work/apt/sources.list"
  opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=$work/apt/parts"
        -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" update -qq
  (cd "$work/src" && apt-get "${opts[@]}" source -qq --download-only pgvector)
  mv "$work"/src/* "$work"/
fi
( cd "$work" && dpkg-source -x --no-check pgvector_*.dsc pgvector >/dev/null )
if [ -n "$fetch_only" ]; then
  mkdir -p "$fetch_only"
  cp -r "$work/pgvector" "$fetch_only/"
  echo "install-pgvector: source unpacked into $fetch_only/pgvector"
  exit 0
fi
make -s -C "$work/pgvector" PG_CONFIG="$PG_CONFIG" OPTFLAGS="" >/dev/null
$SUDO make -s -C "$work/pgvector" PG_CONFIG="$PG_CONFIG" install >/dev/null
echo "install-pgvector: built and installed from Debian source"
