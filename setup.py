"""The package's one build step pyproject.toml cannot declare: the proxy's relay loops in C
(thanosql_pg/proxy/relay.c). Optional: without a compiler the install goes on and the
proxy relays in Python (slower at one client, same behaviour)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("thanosql_pg.proxy.relay", ["thanosql_pg/proxy/relay.c"], optional=True)])
