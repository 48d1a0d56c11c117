from setuptools import find_packages, setup

setup(
    name="thanosql_pg",
    version="0.1.0",
    description="The ThanoSQL machine-learning dialect of SQL as a PostgreSQL extension",
    packages=find_packages(include=["thanosql_pg", "thanosql_pg.*"]),
    python_requires=">=3.11",
    entry_points={
        "console_scripts": [
            "thanosql=thanosql_pg.cli:main",
            "thanosql-proxy=thanosql_pg.proxy.server:main",
        ],
    },
)
