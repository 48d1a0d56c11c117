"""Algorithm families. ``registry`` is importable without torch."""
