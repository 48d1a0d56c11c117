"""Algorithm families: one package each, and the registry that knows them.

Importing this package registers every family (their specs are pure Python: no
torch); the server imports a family's model module only when it runs one of its
models. ``registry`` holds the specs, ``contract`` the interface a model module
implements, ``shared`` what the families have in common.

Built-in families are listed in ``BUILTIN``: adding a family is one package under
``thanosql_pg/algorithms/`` and one line there. Plug-in families (a package of your
own) are found without editing thanosql_pg, in two ways, each naming a module whose
import registers its family (``registry.register``):

- an entry point in group ``thanosql_pg.families`` of an installed distribution
  (``[project.entry-points."thanosql_pg.families"] ocr = "acme_ocr"`` in its
  pyproject.toml): install it into the virtualenv that ``thanosql.python_lib_dir``
  names for the server, and into the proxy's or client's for the preprocessor;
- ``THANOSQL_FAMILIES``, a comma-separated list of module names, in the environment
  of the server and of the proxy/client.

See docs/ARCHITECTURE.md, "Families".
"""

from __future__ import annotations

import importlib
import os

from thanosql_pg.errors import ConfigurationError

# The built-in families' spec packages, in the order messages list their algorithms.
BUILTIN = (
    "thanosql_pg.algorithms.image_classification",
    "thanosql_pg.algorithms.speech_recognition",
    "thanosql_pg.algorithms.simclr",
    "thanosql_pg.algorithms.clip",
)
ENTRY_POINT_GROUP = "thanosql_pg.families"
ENVIRONMENT = "THANOSQL_FAMILIES"


def plugin_modules() -> list[str]:
    """The modules of the plug-in families: entry points first, then $THANOSQL_FAMILIES."""
    from importlib.metadata import entry_points

    names = [ep.value.split(":")[0].strip() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    names += [n.strip() for n in os.environ.get(ENVIRONMENT, "").split(",") if n.strip()]
    return list(dict.fromkeys(names))


def load_plugins() -> list[str]:
    """Import the plug-in families' modules (each registers its family); returns their names."""
    names = plugin_modules()
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigurationError(f'cannot import algorithm family "{name}": {e}',
                                     hint=f"Install it where this Python finds it, or remove it from"
                                     f" {ENVIRONMENT} (or its entry point in {ENTRY_POINT_GROUP}).") from None
    return names


for _spec in BUILTIN:
    importlib.import_module(_spec)
load_plugins()
