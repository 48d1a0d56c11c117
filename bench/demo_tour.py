"""How long `make demo`'s tour takes a newcomer (issue 20: under 5 minutes on two CPU cores,
once installed): the tour (``python -m thanosql_pg.demo``) in a brand-new embedded cluster
(its own THANOSQL_HOME: started as ``thanosql start`` starts one, with the preload), then
run again on the same cluster, which reuses its tables and models. Each step's own time is
read from the tour's output ("(N rows; S s)"). The cluster is stopped and removed after.

    .venv/bin/python bench/demo_tour.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

TARGET_SECONDS = 300.0
_STEP = re.compile(r"^-- (.+)$")
_TOOK = re.compile(r"; ([0-9.]+) s\)$")


def run_tour(home: Path) -> tuple[float, str]:
    env = {**os.environ, "THANOSQL_HOME": str(home)}
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "thanosql_pg.demo"], cwd=common.ROOT, env=env,
                         capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if out.returncode != 0:
        sys.exit(f"the tour failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return seconds, out.stdout


def slowest_steps(output: str, n: int = 8) -> list[tuple[str, float]]:
    """The tour's steps ("-- title") with the seconds their statement took, slowest first."""
    steps: list[tuple[str, float]] = []
    title = ""
    for line in output.splitlines():
        if m := _STEP.match(line):
            title = m[1]
        elif (m := _TOOK.search(line)) and title:
            steps.append((title, float(m[1])))
            title = ""
    return sorted(steps, key=lambda s: -s[1])[:n]


def section(output: str, title: str) -> str:
    """The tour's output from the section heading containing ``title`` to the next heading
    (what a newcomer sees of it: the statements, their rows and timings)."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if title in line), None)
    if start is None:
        return ""
    end = next((i for i in range(start + 2, len(lines)) if lines[i].startswith("=")), len(lines))
    return "\n".join(lines[start:end]).strip()


def main() -> None:
    args = common.parser(__doc__, "demo_tour").parse_args()
    home = Path(tempfile.mkdtemp(prefix="thanosql-tour-"))
    home.chmod(0o755)  # the server runs as another OS user
    try:
        first, output = run_tour(home)
        second, _ = run_tour(home)
    finally:
        subprocess.run([sys.executable, "-m", "thanosql_pg.cli", "stop"], env={**os.environ,
                       "THANOSQL_HOME": str(home)}, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
    fdw = "FolderFDW: multicorn2 is not installed" not in output
    summary = {
        "first_run_seconds": round(first, 1),
        "second_run_seconds": round(second, 1),
        "target_seconds": TARGET_SECONDS,
        "meets_target": first <= TARGET_SECONDS,
        "folder_fdw_shown": fdw,
        "slowest_steps_seconds": dict(slowest_steps(output)),
        # issue 21: the image search the tour shows (EVALUATE's precision@10 and spread, the
        # nearest test digits of a '3' and their scores)
        "image_search_section": section(output, "Image search: SimCLR"),
    }
    common.save(args, "demo_tour", {"first": [first], "second": [second]}, summary)


if __name__ == "__main__":
    main()
