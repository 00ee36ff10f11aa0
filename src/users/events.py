"""Events the users app publishes to the event log."""

from typing import Annotated

from event_log import Event
from event_log.events import Personal


class UserCreated(Event):
    subject = ("user", "user_id")

    user_id: int
    email: Annotated[str, Personal]
    first_name: Annotated[str, Personal]
    last_name: Annotated[str, Personal]
