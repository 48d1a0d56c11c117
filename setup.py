import re
from pathlib import Path

from setuptools import Extension, find_packages, setup

# The release number lives in thanosql_pg/_version.py (see scripts/build_sql.py).
VERSION = re.search(r'^__version__ = "([^"]+)"$',
                    (Path(__file__).parent / "thanosql_pg" / "_version.py").read_text(), re.M).group(1)

setup(
    name="thanosql_pg",
    version=VERSION,
    description="The ThanoSQL machine-learning dialect of SQL as a PostgreSQL extension",
    packages=find_packages(include=["thanosql_pg", "thanosql_pg.*"]),
    python_requires=">=3.11",
    license="PostgreSQL",
    # The proxy's relay loops in C (thanosql_pg/proxy/relay.c). Optional: without a compiler
    # the install goes on and the proxy relays in Python (slower at one client, same behaviour).
    ext_modules=[Extension("thanosql_pg.proxy.relay", ["thanosql_pg/proxy/relay.c"], optional=True)],
    entry_points={
        "console_scripts": [
            "thanosql=thanosql_pg.cli:main",
            "thanosql-proxy=thanosql_pg.proxy.server:main",
        ],
    },
)
