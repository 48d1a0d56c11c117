"""thanosql_pg: the ThanoSQL machine-learning dialect of SQL for PostgreSQL."""

__version__ = "0.1.0"
