"""The envelope of every event: who did it, which request or task it came from, which
trace. ``publish()`` reads it from here, so no caller passes it (the fourth part, the
subject, comes from the event itself: :meth:`Event.subject_key`).

- **actor** (``actor_type``, ``actor_id``), bound by whatever starts a unit of work:
  :class:`ActorMiddleware` for a web request (the user it authenticated, else
  ``api_client``), :class:`CommandActorMixin` and ``manage.py`` for a management command
  (``command``/<name>), :func:`task_started` for a Celery task (the actor of the code
  that queued it, else ``task``/<name>). Nothing bound: ``system``.
- **request_id**: the id the log lines carry, read from structlog's context, where
  django-structlog binds it for a web request and, from the task's headers, for a
  Celery task. One id, one source: what a row says is what the logs say.
- **traceparent**: the W3C ``traceparent`` of the current Sentry span, when tracing is
  on and the span is sampled (an unsampled trace leads nowhere).

Everything lives in context variables, so threads and asyncio tasks each see their
own. Reading the envelope costs no query and no I/O (``publish()`` is on the hot path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

import sentry_sdk
import structlog
from django.http import HttpRequest, HttpResponse
from django.utils.functional import empty

ACTOR_TYPE_MAX_LENGTH = 32
ACTOR_ID_MAX_LENGTH = 255
REQUEST_ID_MAX_LENGTH = 128
TRACEPARENT_MAX_LENGTH = 55  # W3C trace context, version 00

# The Celery header that carries the actor from the code that queues a task into the
# task (django-structlog's own header carries the request id beside it).
ACTOR_HEADER = "event_log_actor"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who caused an event: ``type`` (``user``, ``api_client``, ``command``, ``task``,
    ``system``) and an ``id`` within that type (empty when there is none)."""

    type: str
    id: str = ""

    def __str__(self) -> str:
        return f"{self.type}:{self.id}" if self.id else self.type

    @classmethod
    def parse(cls, text: str) -> Actor:
        """The inverse of ``str()``: ``"user:42"`` → ``Actor("user", "42")``."""
        kind, _, actor_id = text.partition(":")
        return cls(kind, actor_id)


SYSTEM = Actor("system")

# An Actor, or a function giving it when an event is published (a web request's user
# is known only once the view has authenticated it).
ActorSource = Actor | Callable[[], Actor]
_actor: ContextVar[ActorSource | None] = ContextVar("event_log_actor", default=None)


def bind_actor(actor: ActorSource) -> Token[ActorSource | None]:
    """Make ``actor`` the actor of what runs from here on in this context; returns the
    token that :func:`reset_actor` takes to restore the previous one."""
    return _actor.set(actor)


def reset_actor(token: Token[ActorSource | None]) -> None:
    _actor.reset(token)


@contextmanager
def acting_as(actor: ActorSource) -> Iterator[None]:
    """Run the block with ``actor`` as the actor of every event it publishes."""
    token = bind_actor(actor)
    try:
        yield
    finally:
        reset_actor(token)


def current_actor() -> Actor:
    source = _actor.get()
    if source is None:
        return SYSTEM
    return source() if callable(source) else source


def current_request_id() -> str:
    """The request id the current log lines carry, or ``""``."""
    value = structlog.contextvars.get_contextvars().get("request_id")
    return "" if value is None else str(value)


def current_traceparent() -> str:
    """``00-<trace id>-<span id>-01`` for the current sampled Sentry span, or ``""``."""
    span = sentry_sdk.get_current_span()
    if span is None or not span.sampled:
        return ""
    return f"00-{span.trace_id}-{span.span_id}-01"


def current() -> tuple[str, str, str, str]:
    """``(actor_type, actor_id, request_id, traceparent)`` as the outbox stores them:
    cut to their columns' sizes, NUL characters dropped (PostgreSQL refuses them)."""
    actor = current_actor()
    return (
        _fit(actor.type, ACTOR_TYPE_MAX_LENGTH),
        _fit(actor.id, ACTOR_ID_MAX_LENGTH),
        _fit(current_request_id(), REQUEST_ID_MAX_LENGTH),
        _fit(current_traceparent(), TRACEPARENT_MAX_LENGTH),
    )


def _fit(value: str, max_length: int) -> str:
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value[:max_length]


# -- web requests ------------------------------------------------------------------------


def request_actor(request: HttpRequest) -> Actor:
    """The user ``request`` authenticated, else ``api_client``.

    Only a user the request has already loaded counts: loading it here would add a
    session and a user query to ``publish()``. Views that act for a user (the admin)
    have loaded it; the HTTP API authenticates nobody, so its caller is an API client
    (its address is in the request's log lines, under the same request id).
    """
    user = request.__dict__.get("user")
    if user is None or getattr(user, "_wrapped", None) is empty:
        return Actor("api_client")
    if getattr(user, "is_authenticated", False):
        return Actor("user", str(user.pk))
    return Actor("api_client")


class ActorMiddleware:
    """Binds the request's actor for every event published while it is handled.

    Place it after Django's ``AuthenticationMiddleware``.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with acting_as(lambda: request_actor(request)):
            return self.get_response(request)


# -- management commands -----------------------------------------------------------------


def command_actor(name: str) -> Actor:
    return Actor("command", name)


class CommandActorMixin:
    """For a management command: its events carry ``command``/<its name> as actor,
    whether it runs from ``manage.py`` or through ``call_command``."""

    def execute(self, *args: Any, **options: Any) -> Any:
        name = type(self).__module__.rpartition(".")[2]
        with acting_as(command_actor(name)):
            return super().execute(*args, **options)  # type: ignore[misc]


# -- Celery tasks ------------------------------------------------------------------------


def task_queued(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: carry the current actor (if any) into the task."""
    source = _actor.get()
    if headers is not None and source is not None:
        headers[ACTOR_HEADER] = str(current_actor())


def task_started(task: Any = None, **_: Any) -> None:
    """``task_prerun``: the actor that queued the task, else ``task``/<its name>.

    A task run eagerly (``apply()``, ``CELERY_TASK_ALWAYS_EAGER``) runs inside the
    code that called it and keeps that code's actor, if it has one.
    """
    if task is None:
        return
    request = task.request
    queued_by = getattr(request, ACTOR_HEADER, None) or (request.headers or {}).get(ACTOR_HEADER)
    if queued_by:
        actor = Actor.parse(str(queued_by))
    elif request.is_eager and _actor.get() is not None:
        return
    else:
        actor = Actor("task", str(task.name))
    request.event_log_actor_token = bind_actor(actor)


def task_finished(task: Any = None, **_: Any) -> None:
    """``task_postrun``: restore the actor the worker (or an eager caller) had."""
    token = getattr(getattr(task, "request", None), "event_log_actor_token", None)
    if token is not None:
        task.request.event_log_actor_token = None
        try:
            reset_actor(token)
        except ValueError:  # bound in another context (a thread pool's worker)
            _actor.set(None)
