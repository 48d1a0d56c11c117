#!/usr/bin/env bash
# Installs the Debian packages thanosql_pg needs. Idempotent: does nothing
# when everything is already present. Run as root (or with sudo available).
set -euo pipefail
PGV=${PG_MAJOR:-15}
pkgs=(postgresql-$PGV postgresql-client-$PGV postgresql-plpython3-$PGV
      postgresql-server-dev-$PGV python3-venv python3-dev build-essential
      postgresql-$PGV-cron espeak-ng libsndfile1 dpkg-dev)
missing=()
for p in "${pkgs[@]}"; do
  [ -z "$p" ] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-system: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-system: all Debian packages present"
fi
