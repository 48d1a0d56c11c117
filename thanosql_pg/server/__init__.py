"""Code that runs inside PostgreSQL's PL/Python (imports ``plpy``)."""
