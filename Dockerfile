# syntax=docker/dockerfile:1
# The Die Hard image: one image for web (gunicorn), Celery worker, Celery Beat and migrations.

# Build stage: uv and the locked runtime dependencies; uv itself stays out of the final image.
FROM python:3.13-slim AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Only the lock files first, so the dependency layer is rebuilt only when they change.
# uv is installed only if its wheel matches a recorded hash.
COPY pyproject.toml uv.lock docker/uv-requirements.txt ./
RUN --mount=type=cache,target=/root/.cache/uv \
    pip install --no-cache-dir --require-hashes --only-binary=:all: -r uv-requirements.txt \
    && uv sync --locked --no-dev --no-install-project --python /usr/local/bin/python3.13

# Runtime stage.
FROM python:3.13-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/app/.venv \
    PATH="/app/.venv/bin:$PATH"
# An unprivileged user; it owns only var/ (collected static files) and its home.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY . .
# Dummy settings, for this command only: collectstatic needs settings to load, not services.
RUN mkdir -p var \
    && DEBUG=false \
       SECRET_KEY=build-only \
       DATABASE_URL=postgres://build@localhost/build \
       CELERY_BROKER_URL=redis://localhost:6379/0 \
       CLICKHOUSE_URL=http://localhost:8123/default \
       python src/manage.py collectstatic --noinput \
    && chown -R app:app var
USER 10001:10001
EXPOSE 8000
# Threaded workers whose client reads time out (docker/gunicorn.conf.py): slow clients
# cannot stall the service.
CMD ["gunicorn", "-c", "docker/gunicorn.conf.py", "core.wsgi:application", "--chdir", "src"]
