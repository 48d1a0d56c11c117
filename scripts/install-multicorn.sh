#!/usr/bin/env bash
# Installs multicorn2 (the Python foreign data wrapper of PostgreSQL), which the
# FolderFDW (thanosql_pg/fdw.py) needs. multicorn2 is neither in Debian nor on
# PyPI, so it is built from its source release:
#   - the C extension (multicorn.so, multicorn.control, its SQL) into PostgreSQL
#     $PG_MAJOR with PGXS (`make`, then `make install` of the C part only:
#     multicorn's own install target also pip-installs into the system Python);
#   - its Python package into the project's virtualenv (.venv), never the system Python;
#   - a small path hook for the server's embedded Python (below).
# The source: $MULTICORN_TARBALL, else ../shared/vendor/multicorn2-3.2.tar.gz next to
# the project, else the release tarball from GitHub ($MULTICORN_URL).
#
# Optional: when the source cannot be had or the build fails, it says that the
# FolderFDW is unavailable and exits 0, so that `make setup` goes on. Idempotent:
# when this version is installed everywhere, a second run only checks.
#
#   scripts/install-multicorn.sh            install (no-op when installed)
#   THANOSQL_MULTICORN=0 scripts/...        skip it
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VERSION=3.2
PGV=${PG_MAJOR:-15}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/$PGV/bin/pg_config}
PY=/usr/bin/python3  # the interpreter PL/Python (and so multicorn) embeds
VENV=${THANOSQL_VENV:-.venv}
TARBALL=${MULTICORN_TARBALL:-$ROOT/../shared/vendor/multicorn2-$VERSION.tar.gz}
URL=${MULTICORN_URL:-https://github.com/pgsql-io/multicorn2/archive/refs/tags/v$VERSION.tar.gz}
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

unavailable() {
  echo "install-multicorn: $1"
  echo "install-multicorn: the FolderFDW (thanosql_pg.fdw) is unavailable; everything else works." \
       "Retry with: bash scripts/install-multicorn.sh"
  exit 0
}
# Whatever else goes wrong, setup goes on.
trap 'unavailable "unexpected failure (line $LINENO)"' ERR

if [ "${THANOSQL_MULTICORN:-1}" = "0" ]; then
  echo "install-multicorn: skipped (THANOSQL_MULTICORN=0)"
  exit 0
fi
[ -x "$PG_CONFIG" ] || unavailable "no $PG_CONFIG (run scripts/install-system.sh)"
[ -x "$VENV/bin/python" ] || unavailable "no virtualenv $VENV (run scripts/install-venv.sh first)"
VENV=$(cd "$VENV" && pwd)

# --- the path hook --------------------------------------------------------------------
# multicorn's C code starts the backend's Python (the one PL/Python uses) and
# imports `multicorn`, then the wrapper class by its dotted name, on the first
# query of a foreign table in a session. That interpreter is Debian's
# /usr/bin/python3: the virtualenv is on its sys.path only once thanosql's own
# PL/Python functions have put it there (thanosql._load, or the postmaster with
# thanosql.preload). A session whose first statement reads a foreign table, in a
# cluster without preload, would not find multicorn.
#
# Considered: the wrapper option naming a module the system Python can import
# does not help, since multicorn itself is imported first and is in the venv;
# installing multicorn (and so thanosql_pg's dependencies) into the system Python
# is what the project avoids; PYTHONPATH depends on how the postmaster is
# started (thanosql start, pg_ctlcluster, systemd); a plain .pth naming the venv
# would put the whole venv in front of every /usr/bin/python3 on the machine.
# Chosen: a .pth in the system Python's site directory that, only inside a
# PostgreSQL process (/proc/self/exe is `postgres`), registers a last-resort
# import finder. It does nothing until `multicorn` or `thanosql_pg` cannot be
# found the ordinary way; then it adds the cluster's own virtualenv (the
# setting thanosql.python_lib_dir, read from the backend; else the venv that ran
# this script) exactly as thanosql._load does (venv first, its .pth files run,
# pglast loaded with RTLD_DEEPBIND),
# so whichever of the two comes first in a session, the other finds the same
# sys.path. It works with and without shared_preload_libraries.
SITE_DIR=$($PY -c 'import site; print(site.getsitepackages()[0])')
HOOK_NAME=thanosql_multicorn_venv
HOOK_PY=$(cat <<EOF
"""Written by thanosql_pg's scripts/install-multicorn.sh (see there): lets a
PostgreSQL backend's embedded Python find multicorn and thanosql_pg in the
thanosql virtualenv. Delete this file and $HOOK_NAME.pth to remove it."""
import os
import sys

FALLBACK_LIB_DIR = "$VENV"
NAMES = ("multicorn", "thanosql_pg")


def lib_dir():
    """The server's thanosql.python_lib_dir, else the venv that installed this hook."""
    try:
        import ctypes
        get = ctypes.CDLL(None).GetConfigOption  # the backend's own function
        get.restype = ctypes.c_char_p
        get.argtypes = (ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool)
        value = get(b"thanosql.python_lib_dir", True, False)
        if value:
            return value.decode()
    except (AttributeError, OSError, ImportError):
        pass
    return FALLBACK_LIB_DIR


def add_venv(lib):
    """What thanosql._load does: the venv's site-packages (and its .pth files) first."""
    import glob
    import site
    found = sorted(glob.glob(os.path.join(lib, "lib", "python3*", "site-packages")))
    sp = found[-1] if found else lib
    if not os.path.isdir(sp) or sp in sys.path:
        return
    before = list(sys.path)
    site.addsitedir(sp)
    sys.path[:] = [p for p in sys.path if p not in before] + before
    # As thanosql._load: pglast's copy of PostgreSQL's parser must bind to its own
    # symbols, not the backend's (thanosql._load skips this once thanosql_pg is loaded).
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)
    try:
        import pglast.parser  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.setdlopenflags(flags)


class Finder:
    """Last on sys.meta_path: consulted only when the ordinary finders fail."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if path is not None or name not in NAMES:
            return None
        if cls in sys.meta_path:
            sys.meta_path.remove(cls)  # once per process
        add_venv(lib_dir())
        import importlib.util
        return importlib.util.find_spec(name)


def install():
    if Finder not in sys.meta_path:
        sys.meta_path.append(Finder)
EOF
)
HOOK_PTH="import os; os.path.basename(os.path.realpath('/proc/self/exe')) == 'postgres' and __import__('$HOOK_NAME').install()"

# --- already installed? ---------------------------------------------------------------
PKGLIB=$("$PG_CONFIG" --pkglibdir)
SHAREDIR=$("$PG_CONFIG" --sharedir)
c_version() {
  [ -f "$PKGLIB/multicorn.so" ] && [ -f "$SHAREDIR/extension/multicorn--$VERSION.sql" ] || return 0
  sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" "$SHAREDIR/extension/multicorn.control" 2>/dev/null
}
py_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("multicorn"))' 2>/dev/null || true
}
hook_current() {
  [ -f "$SITE_DIR/$HOOK_NAME.py" ] && [ "$(cat "$SITE_DIR/$HOOK_NAME.py")" = "$HOOK_PY" ] &&
    [ -f "$SITE_DIR/$HOOK_NAME.pth" ] && [ "$(cat "$SITE_DIR/$HOOK_NAME.pth")" = "$HOOK_PTH" ]
}
install_hook() {
  $SUDO mkdir -p "$SITE_DIR"
  printf '%s\n' "$HOOK_PY" | $SUDO tee "$SITE_DIR/$HOOK_NAME.py" >/dev/null
  printf '%s\n' "$HOOK_PTH" | $SUDO tee "$SITE_DIR/$HOOK_NAME.pth" >/dev/null
  $SUDO chmod 644 "$SITE_DIR/$HOOK_NAME.py" "$SITE_DIR/$HOOK_NAME.pth"
}
if [ "$(c_version)" = "$VERSION" ] && [ "$(py_version)" = "$VERSION" ]; then
  if hook_current; then
    echo "install-multicorn: multicorn $VERSION already installed"
  else
    install_hook
    echo "install-multicorn: multicorn $VERSION already installed; path hook updated in $SITE_DIR"
  fi
  exit 0
fi

# --- the source -----------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/multicorn-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LOG="$WORK/build.log"
if [ -f "$TARBALL" ]; then
  echo "install-multicorn: building multicorn2 $VERSION from $TARBALL"
  cp "$TARBALL" "$WORK/src.tar.gz"
else
  echo "install-multicorn: downloading multicorn2 $VERSION from $URL"
  # Python's urllib: no curl or wget needed (the Docker image has neither).
  if ! timeout 120 "$PY" - "$URL" "$WORK/src.tar.gz" >"$LOG" 2>&1 <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=30) as r, open(sys.argv[2], "wb") as f:
    f.write(r.read())
EOF
  then
    unavailable "cannot get the source: no $TARBALL, and the download failed ($(tail -n 1 "$LOG"))"
  fi
fi
mkdir "$WORK/src"
tar -xzf "$WORK/src.tar.gz" -C "$WORK/src" --strip-components=1 2>"$LOG" ||
  unavailable "cannot unpack the source ($(tail -n 1 "$LOG"))"
SRC="$WORK/src"
grep -q "default_version = '$VERSION'" "$SRC/multicorn.control" 2>/dev/null ||
  unavailable "the source is not multicorn2 $VERSION (no multicorn.control with default_version '$VERSION')"
# A git archive of the tag: the release process would put the version here.
sed -i "s/__VERSION__/$VERSION/" "$SRC/python/multicorn/__init__.py"

failed() {
  echo "install-multicorn: $1 failed; the last lines of its log:"
  tail -n 15 "$LOG" | sed 's/^/    /'
  unavailable "multicorn2 $VERSION could not be built"
}

# --- the C extension ------------------------------------------------------------------
# `-o python_code`: make install without the prerequisite that pip-installs the
# Python package into the system Python (and upgrades its pip).
make -C "$SRC" -s PG_CONFIG="$PG_CONFIG" PYTHON="$PY" >"$LOG" 2>&1 || failed "make"
$SUDO make -C "$SRC" -s -o python_code PG_CONFIG="$PG_CONFIG" PYTHON="$PY" install >"$LOG" 2>&1 ||
  failed "make install"

# --- the Python package, into the venv ------------------------------------------------
# It has a small C module (multicorn._utils), so it is built. First with the venv's
# own setuptools and no network; then pip's isolated build (fetches setuptools
# and wheel from the configured index); then setuptools' legacy install, which
# needs neither wheel nor network.
PIP=("$VENV/bin/python" -m pip install -q --no-deps --force-reinstall)
if ! "${PIP[@]}" --no-build-isolation --no-index "$SRC" >"$LOG" 2>&1 &&
   ! timeout 300 "${PIP[@]}" "$SRC" >>"$LOG" 2>&1 &&
   ! (cd "$SRC" && PYTHONWARNINGS=ignore "$VENV/bin/python" setup.py -q install \
        --single-version-externally-managed --record "$WORK/record.txt" >>"$LOG" 2>&1); then
  failed "installing the Python package into $VENV"
fi
[ "$(py_version)" = "$VERSION" ] || failed "installing the Python package into $VENV"

install_hook
echo "install-multicorn: multicorn $VERSION installed (extension into PostgreSQL $PGV," \
     "Python package into $VENV, path hook in $SITE_DIR)"
