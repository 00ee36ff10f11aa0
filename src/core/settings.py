"""Django settings. Every URL and secret comes from the environment (see core.env)."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import environ
from celery.schedules import crontab
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from core import env
from core.dsn import mask_secrets

env.load_env_file()

BASE_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = env.REPO_ROOT

DEBUG = env.boolean("DEBUG", default=False)
ENVIRONMENT = env.optional("ENVIRONMENT", default="development")

if DEBUG:
    SECRET_KEY = env.optional("SECRET_KEY", default="insecure-debug-only-key")
else:
    SECRET_KEY = env.required("SECRET_KEY")

ALLOWED_HOSTS = env.string_list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.string_list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # First, so its createsuperuser (which publishes UserCreated) replaces Django's.
    "users",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_structlog",
    # Admin login brute-force protection and the record of login attempts.
    "axes",
    # Swagger UI's page and assets come from the installed django-ninja (its static
    # files), not from a CDN: /api/docs works offline and under a strict CSP.
    "ninja",
    "core",
    "event_log",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The actor of the events a request publishes (event_log.envelope).
    "event_log.envelope.ActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.middleware.RequestIdSanitizerMiddleware",
    "core.middleware.RequestMiddleware",
    "core.middleware.RequestIdHeaderMiddleware",
    # Last, as django-axes requires: it answers a locked-out login.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "core.urls"
# The DEBUG page and error mails mask passwords inside URL-valued settings too.
DEFAULT_EXCEPTION_REPORTER_FILTER = "core.exception_filter.UrlPasswordExceptionReporterFilter"
DEFAULT_EXCEPTION_REPORTER = "core.exception_filter.RedactingExceptionReporter"
WSGI_APPLICATION = "core.wsgi.application"
ASGI_APPLICATION = "core.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env.url("DATABASE_URL", schemes=("postgres", "postgresql", "pgsql"))
try:
    DATABASES = {"default": environ.Env.db_url_config(DATABASE_URL)}
except Exception as exc:  # django-environ raises several types for a bad URL
    raise ImproperlyConfigured(f"DATABASE_URL is malformed: {mask_secrets(str(exc))}") from None
DATABASES["default"]["CONN_MAX_AGE"] = env.integer("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# The relay prepares its statements on the server (event_log.relay.prepared); Django
# leaves psycopg's preparing off unless this option is set. Off behind a connection
# pooler that does not keep prepared statements (PgBouncer in transaction mode before
# 1.21, or with max_prepared_statements = 0). 5 is psycopg's own default; Django's
# cursors bind parameters on the client and never prepare whatever it is.
DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = (
    5 if env.boolean("DATABASE_PREPARED_STATEMENTS", default=True) else None
)

AUTH_USER_MODEL = "users.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Only staff have passwords (sign-ups through the API have none): 12 characters at least.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": env.integer("PASSWORD_MIN_LENGTH", default=12, minimum=12)},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

AUTHENTICATION_BACKENDS = [
    # First, so a locked-out client is refused before its password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# The admin, at a path of the operator's choosing (one segment or more, no leading slash).
ADMIN_URL = (env.optional("ADMIN_URL", default="admin/").strip("/") or "admin") + "/"
# Admin logins: a client address that fails ADMIN_LOGIN_FAILURE_LIMIT times in a row is
# locked out for ADMIN_LOGIN_LOCKOUT_MINUTES (429). Every failure (AccessAttempt,
# AccessFailureLog) and success (AccessLog) is recorded with the client address under the
# trusted-proxy rule, and logged (admin_login_failed / admin_login_succeeded).
AXES_FAILURE_LIMIT = env.integer("ADMIN_LOGIN_FAILURE_LIMIT", default=5, minimum=1)
AXES_COOLOFF_TIME = timedelta(
    minutes=env.integer("ADMIN_LOGIN_LOCKOUT_MINUTES", default=15, minimum=1)
)
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_CLIENT_IP_CALLABLE = "core.client_address.client_ip"
# The admin's login form posts the e-mail as "username" (the form's field name).
AXES_USERNAME_FORM_FIELD = "username"
AXES_RESET_ON_SUCCESS = True
AXES_ENABLE_ACCESS_FAILURE_LOG = True
AXES_VERBOSE = False
# Staff sessions end after this many idle seconds (each request restarts the count).
SESSION_COOKIE_AGE = env.integer("SESSION_IDLE_TIMEOUT", default=30 * 60, minimum=60)
SESSION_SAVE_EVERY_REQUEST = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = REPO_ROOT / "var" / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Request bodies: the API takes small JSON documents only.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.integer("DATA_UPLOAD_MAX_MEMORY_SIZE", default=64 * 1024)

# Abuse: POST /api/users is limited per client address ("<n>/<s|min|h|d>").
API_USERS_CREATE_RATE = env.rate("API_USERS_CREATE_RATE", default="60/min")
# How many proxies in front of the app append to X-Forwarded-For (0: use the peer address).
# The one rule for the client address in rate limits, logs and the login audit trail
# (core.client_address).
NINJA_NUM_PROXIES = env.integer("NUM_PROXIES", default=0)
# IPv6 clients are counted per network of this many bits (a subscriber holds a /64).
RATE_LIMIT_IPV6_PREFIX = env.integer("RATE_LIMIT_IPV6_PREFIX", default=64, minimum=32)

# Security: production-safe unless DEBUG is on.
SECURE_SSL_REDIRECT = env.boolean("SECURE_SSL_REDIRECT", default=not DEBUG)
# Probes and scrapers talk plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^metrics$"]
SESSION_COOKIE_SECURE = env.boolean("SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env.integer("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = env.boolean("SECURE_HSTS_PRELOAD", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy on every response: only this origin's scripts, styles and
# fonts, no inline script, no plugins, no framing. The admin and the Swagger UI page
# (served from the installed django-ninja) need nothing more; Swagger draws its icons
# as data: images.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
# The interactive API docs (/api/docs, /api/openapi.json): off in production unless enabled.
API_DOCS_ENABLED = env.boolean("API_DOCS_ENABLED", default=DEBUG)
# /metrics when DEBUG is off: a scraper presenting "Authorization: Bearer METRICS_TOKEN",
# or one whose client address is in METRICS_ALLOWED_NETWORKS (CIDR list).
METRICS_TOKEN = env.optional("METRICS_TOKEN")
METRICS_ALLOWED_NETWORKS = env.networks(
    "METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"]
)
if env.boolean("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Cache: Redis, shared by every process; the event log debounces relay kicks here.
REDIS_URL = env.url("REDIS_URL", schemes=("redis", "rediss"), default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.optional("CACHE_KEY_PREFIX", default="die-hard"),
        # Fail fast: the cache serves rate limits and relay kicks, never worth a hung request.
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }
}

# Celery
CELERY_BROKER_URL = env.url(
    "CELERY_BROKER_URL", schemes=("redis", "rediss", "amqp", "amqps", "memory")
)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_DEFAULT_QUEUE = env.optional("CELERY_QUEUE", default="celery")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 2.0
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# django-structlog carries the request id (and other bound context) into tasks.
DJANGO_STRUCTLOG_CELERY_ENABLED = True
# A relay task runs every few seconds: its enqueued/started/succeeded lines go to
# DEBUG so an idle stack stays quiet; a failed task is still logged as an error, and
# a run that delivered or failed logs its own lines (event_log.relay).
DJANGO_STRUCTLOG_CELERY_TASK_START_LOG_LEVEL = logging.DEBUG
DJANGO_STRUCTLOG_CELERY_TASK_SUCCESS_LOG_LEVEL = logging.DEBUG
# Revoked covers the Beat ticks that expired while a long run kept the worker busy
# (dropped by design: the next tick does the same work); the relay task never retries.
DJANGO_STRUCTLOG_CELERY_TASK_RETRY_LOG_LEVEL = logging.DEBUG
# An incoming X-Request-ID becomes the request id only where the operator trusts the
# proxy that sets it: off by default outside DEBUG, or a client picks its id in the logs.
DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID = env.boolean("TRUST_UPSTREAM_REQUEST_ID", default=DEBUG)

# ClickHouse: a server (http/https) or the embedded engine (chdb:).
CLICKHOUSE_URL = env.clickhouse_url("CLICKHOUSE_URL")
# Searches (event_log_search, the admin's "Event log" page) read ClickHouse as this
# user, read-only on a server; empty: as CLICKHOUSE_URL.
CLICKHOUSE_READER_URL = env.clickhouse_url("CLICKHOUSE_READER_URL", default="")

# The event log (see event_log.conf for the meaning of each knob).
EVENT_LOG_RELAY_INTERVAL = env.number("EVENT_LOG_RELAY_INTERVAL", default=2.0, minimum=0.1)
EVENT_LOG = {
    "BATCH_SIZE": env.integer("EVENT_LOG_BATCH_SIZE", default=5_000, minimum=1),
    "BATCH_MAX_BYTES": env.integer(
        "EVENT_LOG_BATCH_MAX_BYTES", default=16 * 1024 * 1024, minimum=1024
    ),
    "RELAY_INTERVAL": EVENT_LOG_RELAY_INTERVAL,
    "LEASE_SECONDS": env.number("EVENT_LOG_LEASE_SECONDS", default=30.0, minimum=1.0),
    "TIME_BUDGET": env.number("EVENT_LOG_TIME_BUDGET", default=10.0, minimum=0.1),
    "BACKOFF_INITIAL": env.number("EVENT_LOG_BACKOFF_INITIAL", default=0.5, minimum=0.0),
    "BACKOFF_MAX": env.number("EVENT_LOG_BACKOFF_MAX", default=30.0, minimum=0.0),
    "KICK_ENABLED": env.boolean("EVENT_LOG_KICK", default=True),
    "INSERT_TIMEOUT": env.number("EVENT_LOG_INSERT_TIMEOUT", default=15.0, minimum=1.0),
    "MIN_INSERT_INTERVAL": env.number("EVENT_LOG_MIN_INSERT_INTERVAL", default=0.2),
    "ISOLATION_MAX_INSERTS": env.integer("EVENT_LOG_ISOLATION_MAX_INSERTS", default=500, minimum=2),
    "ALERT_AFTER_ATTEMPTS": env.integer("EVENT_LOG_ALERT_AFTER_ATTEMPTS", default=10, minimum=1),
    "CLICKHOUSE_TABLE": env.optional("EVENT_LOG_CLICKHOUSE_TABLE", default="event_log"),
    "DELIVERY_RETENTION": env.number("EVENT_LOG_DELIVERY_RETENTION", default=604_800.0),
    # Personal data is kept no longer than needed (GDPR Art. 5(1)(e)); 0 keeps for ever:
    # the default, so an upgrade never deletes history unasked (docs/data-protection.md).
    "RETENTION_DAYS": env.integer("EVENT_LOG_RETENTION_DAYS", default=0, minimum=0),
    "DEAD_LETTER_RETENTION_DAYS": env.integer(
        "EVENT_LOG_DEAD_LETTER_RETENTION_DAYS", default=30, minimum=0
    ),
}

CELERY_BEAT_SCHEDULE = {
    "relay-outbox": {
        "task": "event_log.tasks.relay_outbox",
        "schedule": EVENT_LOG_RELAY_INTERVAL,
        # A tick nobody ran in time is dropped: the next one does the same work.
        "options": {"expires": EVENT_LOG_RELAY_INTERVAL * 2},
    },
    # The same run once a minute, monitored as a Sentry cron (Sentry cannot watch
    # sub-minute schedules): if Beat or every worker stops, the check-ins stop.
    "relay-outbox-watchdog": {
        "task": "event_log.tasks.relay_outbox",
        "schedule": crontab(),
        "options": {"expires": 50},
    },
    # The sink-side backstop: every delivery of the last hour is looked up in
    # ClickHouse four times over; old delivery records are purged on the way.
    "event-log-verify": {
        "task": "event_log.tasks.verify_deliveries",
        "schedule": 900.0,
        "kwargs": {"window_seconds": 3600.0},
        "options": {"expires": 600},
    },
    "purge-old-dead-letters": {
        "task": "event_log.tasks.purge_old_dead_letters",
        "schedule": crontab(hour=3, minute=17),
        "options": {"expires": 3600},
    },
}
SENTRY_UNMONITORED_BEAT_ENTRIES = ["^relay-outbox$"]

# Logging and tracing: configured once, in their own modules.
LOG_FORMAT = env.choice(
    "LOG_FORMAT", choices=("json", "console"), default="console" if DEBUG else "json"
)
LOG_LEVEL = env.choice(
    "LOG_LEVEL", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), default="INFO"
)
LOGGING_CONFIG = None

SENTRY_DSN = env.optional("SENTRY_DSN")
SENTRY_ENVIRONMENT = env.optional("SENTRY_ENVIRONMENT", default=ENVIRONMENT)
SENTRY_TRACES_SAMPLE_RATE = env.number("SENTRY_TRACES_SAMPLE_RATE", default=0.0)

from core.logging import configure_logging  # noqa: E402
from core.sentry import configure_sentry  # noqa: E402

configure_logging(log_format=LOG_FORMAT, log_level=LOG_LEVEL)
configure_sentry(
    exclude_beat_tasks=SENTRY_UNMONITORED_BEAT_ENTRIES,
    dsn=SENTRY_DSN,
    environment=SENTRY_ENVIRONMENT,
    traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE,
)
