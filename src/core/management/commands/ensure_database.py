from __future__ import annotations

from typing import Any

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql
from psycopg.conninfo import make_conninfo

# libpq reports connection failures as text only (no SQLSTATE), so these phrases of
# the server's and libpq's messages are what tells the cases apart.
AUTHENTICATION_FAILED = (
    "authentication failed",  # password, scram, peer, ident
    "no pg_hba.conf entry",
    "no password supplied",
    "password authentication",
    "permission denied for database",  # the role may not CONNECT
)


def connect_failure(exc: psycopg.OperationalError, *, database: str, user: str) -> str:
    """Why a connection failed: ``missing`` (the database does not exist),
    ``authentication`` (the user cannot log in) or ``unreachable`` (anything else:
    no server, wrong port, a network error)."""
    message = str(exc)
    if f'database "{database}" does not exist' in message:
        return "missing"
    if f'role "{user}" does not exist' in message or any(
        phrase in message for phrase in AUTHENTICATION_FAILED
    ):
        return "authentication"
    return "unreachable"


class Command(BaseCommand):
    help = (
        "Create the PostgreSQL database named by DATABASE_URL if it does not exist. "
        "Fails with a message that says whether the server is unreachable, the user "
        "cannot log in, or the user may not create the database."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        db = settings.DATABASES["default"]
        name, user = str(db["NAME"]), str(db.get("USER") or "")
        where = f"PostgreSQL at {db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}"
        params = {
            "host": db.get("HOST"),
            "port": db.get("PORT"),
            "user": user,
            "password": db.get("PASSWORD"),
            "dbname": "postgres",
        }
        conninfo = make_conninfo(**{key: str(value) for key, value in params.items() if value})
        try:
            # An application role may own its database and nothing else: try that first.
            psycopg.connect(conninfo, dbname=name).close()
        except psycopg.OperationalError as exc:
            if connect_failure(exc, database=name, user=user) != "missing":
                raise self._connect_error(exc, name=name, user=user, where=where) from None
        else:
            self.stdout.write(f"database {name} exists")
            return
        try:
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            if connect_failure(exc, database="postgres", user=user) == "authentication":
                raise CommandError(
                    f"cannot create database {name}: {user} may not connect to the "
                    f"'postgres' database of {where} to create it ({_reason(exc)}). "
                    f"Create it as a superuser: createdb -O {user} {name}"
                ) from None
            raise self._connect_error(exc, name=name, user=user, where=where) from None
        with conn:
            try:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", [name]
                ).fetchone()
                if exists:
                    self.stdout.write(f"database {name} exists")
                    return
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.Error as exc:
                raise CommandError(
                    f"cannot create database {name} as {user} on {where}: {_reason(exc)}. "
                    f"Create it as a superuser (createdb -O {user} {name}) or grant "
                    f"{user} CREATEDB."
                ) from None
        self.stdout.write(f"database {name} created")

    @staticmethod
    def _connect_error(
        exc: psycopg.OperationalError, *, name: str, user: str, where: str
    ) -> CommandError:
        if connect_failure(exc, database=name, user=user) == "authentication":
            return CommandError(
                f"cannot authenticate to {where} as {user}: {_reason(exc)}. Put the "
                "user's password in DATABASE_URL (postgres://USER:PASSWORD@HOST:PORT/NAME). "
                "A stock Debian/Ubuntu PostgreSQL asks for a password over TCP and the "
                f'role has none: set one with sudo -u postgres psql -c "ALTER ROLE {user} '
                "PASSWORD 'choose-one'\" (README: PostgreSQL on a fresh machine)."
            )
        return CommandError(f"cannot reach {where}: {_reason(exc)}")


def _reason(exc: psycopg.Error) -> str:
    """The server's own words, on one line, without libpq's "connection to … failed:"."""
    text = " ".join(str(exc).split())
    return text.rsplit("failed: ", 1)[-1].removeprefix("FATAL: ").strip()
