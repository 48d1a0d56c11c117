"""Code that runs inside PostgreSQL's PL/Python (imports ``plpy``).

Imported before anything here imports torch (and, with thanosql.preload, in the
postmaster before every session forks), so the environment set here is what torch's
OpenMP runtime reads when it loads.
"""

import os

# OpenMP threads that wait for work sleep instead of spinning. A database server runs
# many backends (and other programs) on the same cores; spinning threads of one
# session take the cores from the others, and a busy machine makes every parallel
# region wait for preempted spinners: on two loaded cores a ConvNeXt layer ran 10x
# slower with the default policy (bench/results/concurrency.json). Set it in the
# server's environment to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
