# syntax=docker/dockerfile:1.7
# reminders: the service image.
#   docker build -t reminders .
#   docker run -e REMINDERS_DATABASE_URL=postgresql+psycopg://user:pass@db:5432/reminders \
#       -e REMINDERS_SECRET_KEY=... -p 8000:8000 reminders
# The container migrates the schema, then runs `reminders run`. Given a command, it runs that
# instead: docker run --rm -e ... reminders reminders check-config
# Every setting is an environment variable (README.md, "Settings"); secrets never go in here.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY pyproject.toml setup.py README.md ./
COPY reminders ./reminders
COPY alembic ./alembic
COPY config ./config
# A wheel for the service and one for every dependency: the runtime stage installs these
# offline, with no compiler, no network and no source tree.
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
# tini is PID 1: it hands SIGTERM to the service's process group and reaps what exits.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 reminders \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin reminders \
    && mkdir -p /app/data \
    && chown 10001:10001 /app/data
# Mounted, not copied: the wheels are never a layer of the final image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels reminders
WORKDIR /app
# The default protocols and templates, where ops can mount their own over them.
COPY config /app/config
COPY --chmod=0755 docker/entrypoint.sh /app/entrypoint.sh
# Safe defaults only. PGCONNECT_TIMEOUT bounds each attempt to reach PostgreSQL, so a
# database that drops packets is retried like one that refuses them.
ENV REMINDERS_CONFIG_DIR=/app/config \
    REMINDERS_HTTP_HOST=0.0.0.0 \
    REMINDERS_HTTP_PORT=8000 \
    REMINDERS_DATABASE_URL=sqlite:////app/data/reminders.db \
    REMINDERS_LOG_FORMAT=json \
    PGCONNECT_TIMEOUT=10
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/healthz' % os.environ.get('REMINDERS_HTTP_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/app/entrypoint.sh"]
