"""Events the users app publishes to the event log."""

from event_log import Event


class UserCreated(Event):
    user_id: int
    email: str
    first_name: str
    last_name: str
