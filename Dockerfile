# thanosql_pg in a container: PostgreSQL 15 + the extension + the proxy.
#   docker build -t thanosql_pg .
#   docker run -e THANOSQL_PASSWORD=secret -p 5432:5432 -p 6432:6432 thanosql_pg
# Port 5432 is PostgreSQL itself, 6432 the ThanoSQL proxy (connect as user root).
FROM debian:12

RUN apt-get update && apt-get install -y --no-install-recommends make sudo ca-certificates git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/thanosql_pg
COPY . .
# The same install scripts CI runs (make test -> scripts/setup.sh).
RUN bash scripts/install-system.sh \
    && bash scripts/install-pgvector.sh \
    && bash scripts/install-venv.sh \
    && make -s all install

ENV THANOSQL_HOME=/var/lib/thanosql \
    THANOSQL_LISTEN_ADDRESSES='*' \
    THANOSQL_PORT=5432 \
    THANOSQL_PROXY_PORT=6432
EXPOSE 5432 6432
VOLUME /var/lib/thanosql
CMD [".venv/bin/thanosql", "start", "--foreground"]
