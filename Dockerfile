# syntax=docker/dockerfile:1
# reminders: the service image. Build: docker build -t reminders .
# Run: docker run -e REMINDERS_DATABASE_URL=postgresql+psycopg://... -p 8000:8000 reminders

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml setup.py README.md ./
COPY reminders ./reminders
COPY alembic ./alembic
COPY config ./config
# Wheels for the service and every dependency; the runtime stage installs only these.
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# tini is PID 1: it forwards SIGTERM to the service and reaps children.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin reminders \
    && mkdir -p /app/data && chown reminders /app/data
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels reminders && rm -rf /wheels
WORKDIR /app
COPY config /app/config
COPY docker/entrypoint.sh /app/entrypoint.sh
ENV REMINDERS_CONFIG_DIR=/app/config \
    REMINDERS_HTTP_HOST=0.0.0.0 \
    REMINDERS_HTTP_PORT=8000 \
    REMINDERS_DATABASE_URL=sqlite:////app/data/reminders.db \
    REMINDERS_LOG_FORMAT=json
USER reminders
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REMINDERS_HTTP_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "/app/entrypoint.sh"]
