# thanosql_pg: PGXS build of the `thanosql` extension, plus the project's
# setup, demo and test entry points.
#
#   make demo      install everything, start the embedded cluster + proxy, run the tour
#   make test      install whatever is missing, then run pytest and pg_regress
#   make install   (PGXS) install the extension into an existing PostgreSQL

EXTENSION = thanosql
MODULE_big = thanosql
OBJS = src/thanosql.o src/progress.o src/preload.o src/signals.o src/act.o src/jobs.o
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config

# One release number, in thanosql_pg/_version.py: the control file, the SQL
# scripts (scripts/build_sql.py) and the C module take it from there.
RELEASE := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' thanosql_pg/_version.py)
# The install script of every earlier release, frozen, so that databases at any
# release can be updated (and the upgrade tests can install them).
DATA = $(wildcard extension/frozen/thanosql--*.sql)
DATA_built = $(shell python3 scripts/build_sql.py --list)
EXTRA_CLEAN = thanosql.control build/extension

# The virtualenv PL/Python uses by default (overridable at run time with the
# thanosql.python_lib_dir setting).
VENV ?= $(abspath .venv)
PG_CPPFLAGS = -DTHANOSQL_DEFAULT_LIB_DIR=\"$(VENV)\" -DTHANOSQL_VERSION=\"$(RELEASE)\"

# pg_regress suites: native ThanoSQL syntax, run through the proxy.
REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=. --outputdir=$(CURDIR)/build/regress --dbname=thanosql_regress \
	--host=$(PROXY_HOST) --port=$(PROXY_PORT) --user=$(PGUSER)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The scripts and the control file are generated; the C module is rebuilt when
# the release number changes.
$(DATA_built) thanosql.control &: scripts/build_sql.py thanosql.control.in thanosql_pg/_version.py \
		extension/prelude.sql $(wildcard extension/migrations/*/*.sql extension/idempotent/*.sql)
	python3 scripts/build_sql.py
all: thanosql.control
install: thanosql.control
src/thanosql.o: thanosql_pg/_version.py

THANOSQL = .venv/bin/thanosql
STATUS = $(THANOSQL) status --json

.PHONY: setup demo test pytest regress start stop lint

setup:
	bash scripts/setup.sh

demo: setup
	$(THANOSQL) start
	.venv/bin/python -m thanosql_pg.demo

lint: $(DATA_built)
	.venv/bin/ruff check thanosql_pg tests bench scripts
	@# the typed contract and the server, strictly (mypy.ini; stubs/plpy.pyi is PL/Python's plpy)
	.venv/bin/mypy
	@# pgspot analyses each script as PostgreSQL runs it. The control file's
	@# schema is created by CREATE EXTENSION (extension/prelude.sql checks that a
	@# superuser owns it), which pgspot cannot know: tell it.
	@for f in $(DATA_built); do \
		printf 'CREATE SCHEMA thanosql;\n' | cat - $$f | grep -v '^\\echo' > build/pgspot-input.sql; \
		echo "pgspot $$f"; \
		.venv-lint/bin/pgspot --ignore-lang plpython3u build/pgspot-input.sql | tee build/pgspot.out; \
		grep -q 'Errors: 0 Warnings: 0 Unknown: 0' build/pgspot.out || exit 1; \
	done

pytest:
	.venv/bin/python -m pytest -q --durations=30 tests

regress:
	@mkdir -p build/regress
	$(MAKE) installcheck PROXY_HOST=127.0.0.1 \
		PROXY_PORT=$$($(STATUS) | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["proxy_port"])') \
		PGUSER=$$($(STATUS) | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["superuser"])')

# The tests' cluster runs without the preload: a session reads Python code when it first uses
# it (tests/test_family_contract.py installs a plug-in family); tests/test_preload.py runs one.
test: setup
	$(THANOSQL) start --no-preload
	$(MAKE) lint
	$(MAKE) pytest
	$(MAKE) regress
