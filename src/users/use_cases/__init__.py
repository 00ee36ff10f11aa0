"""The users app's business actions.

``UserCreated`` is re-exported here because the challenge template defined it
beside ``CreateUser``; its home is :mod:`users.events`.
"""

from users.events import UserCreated
from users.use_cases.create_user import CreateUser, CreateUserRequest, CreateUserResponse

__all__ = ["CreateUser", "CreateUserRequest", "CreateUserResponse", "UserCreated"]
