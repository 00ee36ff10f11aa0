"""The production gunicorn worker: threaded, with bounds on how long a client may
keep a thread waiting for its request.

gunicorn's ``gthread`` worker already parks a connection that has sent nothing in its
poller instead of a thread. A client that sends part of a request and stalls, or
trickles it a byte at a time, held a thread in a blocking read for as long as it
liked, so as many slow clients as threads stopped the service (with the synchronous
workers this replaces, one per worker did). Here a read of a client's socket gives up
after ``GUNICORN_READ_TIMEOUT`` seconds of silence, and reading one request (headers
and body) after ``GUNICORN_READ_DEADLINE`` seconds in all; the connection is then
closed and the thread freed.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

READ_TIMEOUT = float(os.environ.get("GUNICORN_READ_TIMEOUT", "") or 10.0)
READ_DEADLINE = float(os.environ.get("GUNICORN_READ_DEADLINE", "") or 30.0)


class ReadTimeoutSocket(socket.socket):
    """A client socket whose blocking reads are bounded.

    gunicorn makes the socket blocking each time a thread takes the connection up
    for a request: that starts the request's read deadline.
    """

    read_timeout = READ_TIMEOUT
    read_deadline = READ_DEADLINE
    _deadline = 0.0

    def setblocking(self, flag: bool) -> None:
        if flag:
            self._deadline = time.monotonic() + self.read_deadline
            self.settimeout(self.read_timeout)
        else:
            super().setblocking(False)

    def _bound_next_read(self) -> None:
        if self.gettimeout() is None or self.gettimeout() == 0.0:
            return  # non-blocking: the poller's business, not a thread's
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client took too long to send its request")
        self.settimeout(min(self.read_timeout, remaining))

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._bound_next_read()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._bound_next_read()
        return super().recv_into(buffer, nbytes, flags)


class SlowClientSafeWorker(ThreadWorker):
    """``gthread`` whose client sockets bound their reads (see the module doc)."""

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


__all__ = ["READ_DEADLINE", "READ_TIMEOUT", "ReadTimeoutSocket", "SlowClientSafeWorker"]
