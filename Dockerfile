# syntax=docker/dockerfile:1

# The chat server: one image for every role (web, worker, beat, migrate), picked by the first
# argument to deploy/entrypoint.sh. docs/operations.md ("Image") says how to build and run it.
#
# The base is pinned by tag. A production build pins its digest too, so that a rebuild starts
# from the very layers that were scanned, and Dependabot (.github/dependabot.yml) moves both:
#   FROM python:3.11-slim-bookworm@sha256:<digest>
# (`docker buildx imagetools inspect python:3.11-slim-bookworm` prints the digest.)

FROM python:3.11-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
# The runtime dependencies only: [project] dependencies, not the dev or loadtest extras.
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt
# Wheels only: every dependency publishes one for this platform, so no stage needs a compiler,
# and one that stops doing so fails this step instead of compiling in secret. The virtualenv
# has no pip of its own (Python 3.11's bundled setuptools 65 has known vulnerabilities).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --only-binary=:all: --wheel-dir /wheels -r requirements.txt \
    && python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-index --find-links /wheels -r requirements.txt


FROM python:3.11-slim-bookworm
# Nothing installs packages in a running container: pip, setuptools and wheel go, and with
# them the base image's only Python packages that ever show up in vulnerability scans.
# A fixed numeric UID, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
RUN python -m pip uninstall --yes --disable-pip-version-check pip setuptools wheel \
    && groupadd --gid 10001 chat \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin chat
# The root filesystem can be read-only: nothing is written under /app at run time; beat's
# schedule goes to /tmp (an emptyDir in Kubernetes). REQUIRE_SECRET_KEY: without SECRET_KEY
# (or SECRET_KEY_FILE) the settings refuse to start rather than generate a key per pod; it is
# a flag, not a secret, which hadolint's DL3064 guesses from its name.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REQUIRE_SECRET_KEY=1 \
    CELERY_BEAT_SCHEDULE_FILENAME=/tmp/celerybeat-schedule
COPY --from=builder /opt/venv /opt/venv
# The app runs from its source: the settings find frontend/, the templates and var/static
# (STATIC_ROOT) next to project/. Owned by root: the app user can read it, not change it.
WORKDIR /app
COPY manage.py ./
COPY project/ project/
COPY web/ web/
COPY realtime/ realtime/
COPY frontend/ frontend/
COPY --chmod=0755 deploy/entrypoint.sh deploy/entrypoint.sh
# The browser client's hashed copies and manifest in /app/var/static; pages then name the
# hashed files (project/settings.py, STATIC_HASHED). SECRET_KEY is set for this one command
# only: the settings need one to load, collectstatic signs nothing, and no key stays behind.
# Then the bytecode, since a read-only filesystem cannot take it at run time.
RUN SECRET_KEY=collectstatic-only-not-a-secret STATIC_HASHED=1 python manage.py collectstatic --noinput --verbosity 0 \
    && python -m compileall -q /app
USER 10001:10001
EXPOSE 8000
# No HEALTHCHECK: Kubernetes ignores it and probes /healthz and /readyz itself (k8s/).
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["web"]
