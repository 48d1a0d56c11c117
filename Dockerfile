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
#   WITH_MULTICORN=1     build multicorn2 from source, for the FolderFDW foreign data wrapper
#   MULTICORN_REF=tag    the multicorn2 tag or branch to build (default v3.0)
#   PREFETCH_WEIGHTS=1   download the default pretrained weights (the four image models, the
#                        two Wav2Vec2 models) into the image, for servers without internet
FROM debian:12

ARG TORCH_INDEX=""
ARG WITH_MULTICORN=0
ARG MULTICORN_REF=v3.0
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

# multicorn2 is not packaged for Debian or PyPI: build its extension against
# PostgreSQL 15 and install its Python part into the system Python, which the
# server's embedded interpreter imports it from.
RUN if [ "$WITH_MULTICORN" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends python3-setuptools python3-pip \
      && git clone --depth 1 --branch "$MULTICORN_REF" https://github.com/pgsql-io/multicorn2 /tmp/multicorn2 \
      && cd /tmp/multicorn2 \
      && export PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config PYTHON=/usr/bin/python3 PIP_BREAK_SYSTEM_PACKAGES=1 \
      && make && make install \
      && cd / && rm -rf /tmp/multicorn2 /var/lib/apt/lists/*; \
    fi

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
