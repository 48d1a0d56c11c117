"""Run the tutorials in docs/tutorials against the embedded cluster and store them with
their outputs (tables, progress, pictures), so that a reader on GitHub sees the results.

    .venv/bin/python scripts/run_tutorials.py [notebook.ipynb ...]   # default: all of them

Paths under the cluster's data folder are written relative to it (as thanosql.data_dir
reads them), so outputs carry no machine's paths; tests/test_tutorials.py checks that.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from thanosql_pg.cluster import Cluster

TUTORIALS = Path(__file__).resolve().parent.parent / "docs" / "tutorials"
# What a machine leaves in outputs besides the data folder: temporary files, home folders, the clone
MACHINE_PATHS = re.compile(r"(/tmp/|/home/|/root/|/work/|/var/lib/thanosql)[^\s'\"<>|)]*")


def scrub_text(text: str, files: Path) -> str:
    for prefix in (f"{files}/", f"{files.resolve()}/"):
        text = text.replace(prefix, "")
    return MACHINE_PATHS.sub("<path>", text)


def settled(text: str) -> str:
    """A stream as a terminal shows it at the end: of each line redrawn with carriage
    returns (a progress bar), its last state."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def coalesced(outputs: list[nbformat.NotebookNode]) -> list[nbformat.NotebookNode]:
    """Consecutive writes to one stream as one output (a progress bar writes hundreds)."""
    merged: list[nbformat.NotebookNode] = []
    for out in outputs:
        last = merged[-1] if merged else None
        if (out.get("output_type") == "stream" and last is not None and last.get("output_type") == "stream"
                and last.get("name") == out.get("name")):
            last["text"] += out["text"]
        else:
            merged.append(out)
    return merged


def scrub(nb: nbformat.NotebookNode, files: Path) -> None:
    """Outputs without the machine's paths (and without the kernel's widget state)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = coalesced(cell.outputs)
        for out in cell.outputs:
            if "text" in out:
                out["text"] = scrub_text(settled(out["text"]), files)
            for kind, value in list(out.get("data", {}).items()):
                if kind.startswith("text/") and isinstance(value, str):
                    out["data"][kind] = scrub_text(value, files)
            if out.get("output_type") == "error":
                out["traceback"] = [scrub_text(t, files) for t in out.get("traceback", [])]
    nb.metadata.pop("widgets", None)


def run(path: Path, files: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.monotonic()
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(TUTORIALS)}}).execute()
    scrub(nb, files)
    nbformat.write(nb, path)
    return time.monotonic() - start


def main(argv: list[str]) -> int:
    cluster = Cluster()
    state = cluster.start()
    files = Path(state.files_dir) if hasattr(state, "files_dir") else cluster.files
    names = argv or sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    for name in names:
        seconds = run(TUTORIALS / Path(name).name, files)
        print(f"{name}: {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
