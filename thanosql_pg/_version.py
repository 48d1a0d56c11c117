"""The release number, in one place: the package face re-exports it, and setup.py, the
Makefile (the control file, the SQL scripts of scripts/build_sql.py, the C module) and
the in-database code read it from here, so that none of them imports the notebook-facing
package face."""

__version__ = "0.3.0"
