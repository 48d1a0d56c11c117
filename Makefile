# thanosql_pg: PGXS build of the `thanosql` extension, plus the project's
# setup, demo and test entry points.
#
#   make demo      install everything, start the embedded cluster + proxy, run the tour
#   make test      install whatever is missing, then run pytest and pg_regress
#   make install   (PGXS) install the extension into an existing PostgreSQL

EXTENSION = thanosql
MODULE_big = thanosql
OBJS = src/thanosql.o
DATA = extension/thanosql--0.1.0.sql
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config

# The virtualenv PL/Python uses by default (overridable at run time with the
# thanosql.python_lib_dir setting).
VENV ?= $(abspath .venv)
PG_CPPFLAGS = -DTHANOSQL_DEFAULT_LIB_DIR=\"$(VENV)\"

# pg_regress suites: native ThanoSQL syntax, run through the proxy.
REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=. --outputdir=$(CURDIR)/build/regress --dbname=thanosql_regress \
	--host=$(PROXY_HOST) --port=$(PROXY_PORT) --user=$(PGUSER)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

THANOSQL = .venv/bin/thanosql
STATUS = $(THANOSQL) status --json

.PHONY: setup demo test pytest regress start stop lint

setup:
	bash scripts/setup.sh

demo: setup
	$(THANOSQL) start
	.venv/bin/python -m thanosql_pg.demo

lint:
	.venv/bin/ruff check thanosql_pg tests bench

pytest:
	.venv/bin/python -m pytest -q tests

regress:
	@mkdir -p build/regress
	$(MAKE) installcheck PROXY_HOST=127.0.0.1 \
		PROXY_PORT=$$($(STATUS) | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["proxy_port"])') \
		PGUSER=$$($(STATUS) | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["superuser"])')

test: setup
	$(THANOSQL) start
	$(MAKE) lint
	$(MAKE) pytest
	$(MAKE) regress
