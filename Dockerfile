# thanosql_pg in a container: PostgreSQL 15 + the extension + the proxy.
#   docker build -t thanosql_pg .
#   docker run -e THANOSQL_PASSWORD=secret -p 5432:5432 -p 6432:6432 thanosql_pg
# Port 5432 is PostgreSQL itself, 6432 the ThanoSQL proxy (connect as user root).
#
# Build arguments (all optional):
#   TORCH_INDEX=URL      an extra pip index for torch/torchvision/torchaudio, e.g.
#                        https://download.pytorch.org/whl/cu128 for that CUDA build, or .../whl/cpu
#                        for a smaller CPU-only image. Empty (the default): PyPI's Linux wheels,
#                        which are CUDA builds (they also run on CPU), at the pins of constraints.txt.
#   WITH_MULTICORN=0     leave out multicorn2 and so the FolderFDW foreign data wrapper (default 1:
#                        scripts/install-multicorn.sh builds multicorn2 3.2 from its GitHub release;
#                        without network it says so and the image is built without it)
#   PREFETCH_WEIGHTS=1   download the default pretrained weights (the four image models, the
#                        two Wav2Vec2 models) into the image, for servers without internet
FROM debian:12

ARG TORCH_INDEX=""
ARG WITH_MULTICORN=1
ARG PREFETCH_WEIGHTS=0

RUN apt-get update && apt-get install -y --no-install-recommends make sudo ca-certificates git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/thanosql_pg
COPY . .
# The same install scripts CI runs (make test -> scripts/setup.sh). pip reads
# PIP_EXTRA_INDEX_URL; the pins in constraints.txt still decide the versions.
RUN if [ -n "$TORCH_INDEX" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX"; fi \
    && bash scripts/install-system.sh \
    && bash scripts/install-pgvector.sh \
    && bash scripts/install-venv.sh \
    && make -s all install

# multicorn2 (FolderFDW) is not packaged for Debian or PyPI: the same script as
# make setup builds its extension against PostgreSQL 15 and installs its Python
# package into the virtualenv. Optional: it never fails the build.
RUN if [ "$WITH_MULTICORN" = "1" ]; then bash scripts/install-multicorn.sh; fi

# Pretrained weights go to caches the server (OS user postgres) can read.
ENV HF_HOME=/var/cache/thanosql/huggingface \
    TORCH_HOME=/var/cache/thanosql/torch
RUN mkdir -p "$HF_HOME" "$TORCH_HOME" \
    && if [ "$PREFETCH_WEIGHTS" = "1" ]; then \
      .venv/bin/python -c 'import timm, transformers; \
from thanosql_pg.algorithms.registry import ALGORITHMS; \
[timm.create_model(a.params["timm_name"], pretrained=True) for a in ALGORITHMS.values() if "timm_name" in a.params]; \
hubs = [a.params["hub_id"] for a in ALGORITHMS.values() if "hub_id" in a.params]; \
[(transformers.AutoProcessor.from_pretrained(h), transformers.Wav2Vec2ForCTC.from_pretrained(h)) for h in hubs]; \
print("prefetched", len(hubs), "speech models and the timm image models")'; \
    fi \
    && chmod -R a+rX /var/cache/thanosql

ENV THANOSQL_HOME=/var/lib/thanosql \
    THANOSQL_LISTEN_ADDRESSES='*' \
    THANOSQL_PORT=5432 \
    THANOSQL_PROXY_PORT=6432
EXPOSE 5432 6432
VOLUME /var/lib/thanosql
CMD [".venv/bin/thanosql", "start", "--foreground"]
