"""The production gunicorn worker: threaded, with a bound on how long a client may
keep a thread waiting for its next bytes.

gunicorn's ``gthread`` worker already parks a connection that has sent nothing in its
poller instead of a thread. A client that sends part of a request and stalls,
though, held a thread in a blocking read for as long as it kept the socket open, so
as many stalled clients as threads stopped the service. Here every read of a
client's socket gives up after ``GUNICORN_READ_TIMEOUT`` seconds and the connection
is closed, which frees the thread.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

READ_TIMEOUT = float(os.environ.get("GUNICORN_READ_TIMEOUT", "") or 10.0)


class ReadTimeoutSocket(socket.socket):
    """A client socket whose blocking mode is a timeout, not forever."""

    read_timeout = READ_TIMEOUT

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(self.read_timeout)
        else:
            super().setblocking(False)


class SlowClientSafeWorker(ThreadWorker):
    """``gthread`` whose client sockets time out their reads (see the module doc)."""

    def accept(self, listener: Any) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        timed = ReadTimeoutSocket(
            client_sock.family, client_sock.type, client_sock.proto, fileno=client_sock.detach()
        )
        timed.setblocking(True)
        self.enqueue_req(TConn(self.cfg, timed, client_addr, listener.getsockname()))


__all__ = ["READ_TIMEOUT", "ReadTimeoutSocket", "SlowClientSafeWorker"]
