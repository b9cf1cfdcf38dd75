# replicator's own image: `replicator` as the entrypoint, run as a non-root user.
#
#   docker build -t replicator .          (podman too; --build-arg BASE=... for any Debian-based image with python3 >= 3.11)
#   docker run --rm -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_REGION replicator generations s3://my-bucket/app
#
# To run your app with replicator in ONE container (docs/DEPLOY.md), put it into your app's image, either from
# this image (same base image in both, since the venv in /opt/replicator uses the base's python3):
#
#   FROM python:3.12-slim
#   COPY --from=replicator /opt/replicator /opt/replicator
#   ENV PATH=/opt/replicator/bin:$PATH REPLICATOR_DB=/data/app.db
#   ... your app; /data writable by its user ...
#   ENTRYPOINT ["replicator", "replicate", "--exec", "my-app --port 8080"]
#
# or with `pip install` of this repository (or a wheel of it) in your own Dockerfile, as the block below does.
# That one line restores a missing database, runs the app, ships every commit, and ships the last ones at the
# container's stop. Everything else comes from the environment at run time:
# REPLICATOR_URL=s3://my-bucket/app, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and AWS_ENDPOINT_URL
# for a store other than AWS. examples/signup/ is a complete, tested app image built this way.
ARG BASE=python:3.12-slim
FROM ${BASE}

# replicator from this repository's source, into a venv of its own: Debian's python3 refuses `pip install`
# into the system (PEP 668). A base without the venv module gets it in the system's python3 instead.
COPY pyproject.toml README.md /tmp/replicator-src/
COPY replicator /tmp/replicator-src/replicator
COPY cli /tmp/replicator-src/cli
RUN if python3 -m venv /opt/replicator; then pip="/opt/replicator/bin/pip"; \
    else rm -rf /opt/replicator; pip="python3 -m pip"; export PIP_BREAK_SYSTEM_PACKAGES=1; fi \
    && $pip install --no-cache-dir --disable-pip-version-check /tmp/replicator-src \
    && rm -rf /tmp/replicator-src
ENV PATH=/opt/replicator/bin:$PATH PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 replicator \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/replicator replicator \
    && mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
WORKDIR /data
ENTRYPOINT ["replicator"]
CMD ["--help"]
