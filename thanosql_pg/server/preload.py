"""What the postmaster imports when thanosql.preload is on (src/preload.c).

Every backend is forked from the postmaster, so whatever is imported here is
already loaded in each new session (no seconds of `import torch` on the first
PREDICT) and its memory pages are shared between sessions until written.

Only imports: nothing here may start a thread, open a file it keeps, initialise
CUDA or talk to the database (there is no database session in the postmaster).
"""

from __future__ import annotations

import gc
import importlib

# The heavy libraries first: if thanosql_pg's own modules fail, these still help.
LIBRARIES = (
    "numpy", "PIL.Image", "safetensors.torch", "soundfile", "torch", "torch.nn.functional", "torchaudio",
    "timm", "transformers",
)


def run() -> list[str]:
    """Import what sessions need; returns the modules that failed (logged by the caller)."""
    from thanosql_pg.algorithms import registry

    failed = []
    # No collection while importing (it would only fragment the heap the sessions inherit)...
    gc.disable()
    modules = [*LIBRARIES, "thanosql_pg.server.entry", "thanosql_pg.server.models",
               "thanosql_pg.server.embeddings", "thanosql_pg.preprocessor"]
    modules += sorted({family.model for family in registry.FAMILIES.values() if family.model})
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # keep going: each session imports what is missing on first use
            failed.append(f"{name}: {e}")
    # ... and then every object made so far moves to the permanent generation: a session's
    # collections never walk the hundreds of thousands of objects torch, timm and
    # transformers made here. Walked, their gc headers would be written, and each page
    # written is copied out of the memory the sessions share with the postmaster: the
    # first collections in every new session cost ~1 s and its share of that memory.
    gc.collect()
    gc.freeze()
    gc.enable()
    if failed:
        print("thanosql.preload: could not import " + "; ".join(failed), flush=True)
    return failed
