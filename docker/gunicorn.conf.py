"""gunicorn settings of the image and of Compose (``-c docker/gunicorn.conf.py``).

Threaded workers whose client reads time out (core.gunicorn_worker): a connection
that sends nothing waits in the worker's poller, not in a thread, and a client that
stalls mid-request loses its thread after GUNICORN_READ_TIMEOUT seconds. With the
synchronous workers this replaces, one stalled socket per worker stopped the service.
"""

import os

bind = "0.0.0.0:8000"
worker_class = "core.gunicorn_worker.SlowClientSafeWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# A worker silent for this long (a hung request) is restarted.
timeout = 30
graceful_timeout = 30
keepalive = 5
# Bounds on what a client may send before the app sees it.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = "-"
