from typing import Any

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql
from psycopg.conninfo import make_conninfo


class Command(BaseCommand):
    help = "Create the PostgreSQL database named by DATABASE_URL if it does not exist."

    def handle(self, *args: Any, **options: Any) -> None:
        db = settings.DATABASES["default"]
        params = {
            "host": db.get("HOST"),
            "port": db.get("PORT"),
            "user": db.get("USER"),
            "password": db.get("PASSWORD"),
            "dbname": "postgres",
        }
        conninfo = make_conninfo(**{key: str(value) for key, value in params.items() if value})
        try:
            # An application role may own its database and nothing else: try that first.
            psycopg.connect(conninfo, dbname=db["NAME"]).close()
        except psycopg.OperationalError as exc:
            if "does not exist" not in str(exc):
                raise CommandError(f"cannot connect to database {db['NAME']}: {exc}") from None
        else:
            self.stdout.write(f"database {db['NAME']} exists")
            return
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
                ).fetchone()
                if exists:
                    self.stdout.write(f"database {db['NAME']} exists")
                    return
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
        except psycopg.Error as exc:
            raise CommandError(f"cannot create database {db['NAME']}: {exc}") from None
        self.stdout.write(f"database {db['NAME']} created")
