# replicator in a container. Typical entrypoint for an app image that embeds it:
#   replicator restore --if-db-not-exists --if-replica-exists -o /data/app.db "$REPLICA_URL" && exec app
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY replicator ./replicator
COPY cli ./cli
RUN pip install --no-cache-dir . && rm -rf /src \
    && useradd --system --uid 10001 --create-home replicator

USER replicator
WORKDIR /data
ENTRYPOINT ["replicator"]
CMD ["--help"]
