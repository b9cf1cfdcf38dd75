# replicator in a container. Typical entrypoint for an app image that embeds it (docs/RESTORE.md):
#   replicator replicate /data/app.db "$REPLICA_URL" --exec "app --port 8080"
# which restores a missing database, starts the app, and ships everything it committed when it stops.
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
