from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from event_log.dead_letters import dead_letters_list, dead_letters_purge, dead_letters_replay


class Command(BaseCommand):
    help = "List, replay or purge dead-lettered events."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("list", help="show dead letters")
        listing.add_argument("--json", action="store_true", help="one JSON object per line")
        listing.add_argument("--limit", type=int, default=None)
        for name, text in (("replay", "move back to the outbox"), ("purge", "delete for good")):
            action = actions.add_parser(name, help=text)
            action.add_argument("ids", nargs="*", type=int, help="dead-letter ids")
            action.add_argument("--all", action="store_true", help="every dead letter")
            if name == "purge":
                action.add_argument(
                    "--older-than-days", type=float, default=None, help="only older ones"
                )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list(as_json=options["json"], limit=options["limit"])
            return
        ids: list[int] | None = options["ids"] or None
        older = options.get("older_than_days")
        if ids is None and not options["all"] and older is None:
            raise CommandError(f"{action}: give dead-letter ids, --all or a filter")
        if ids is not None and options["all"]:
            raise CommandError(f"{action}: give ids or --all, not both")
        if action == "replay":
            count = dead_letters_replay(ids=ids)
            self.stdout.write(f"replayed {count} dead letters")
        else:
            cutoff = datetime.now(UTC) - timedelta(days=older) if older is not None else None
            count = dead_letters_purge(ids=ids, older_than=cutoff)
            self.stdout.write(f"purged {count} dead letters")

    def _list(self, *, as_json: bool, limit: int | None) -> None:
        for letter in dead_letters_list(limit=limit):
            row: dict[str, Any] = {
                "id": letter.id,
                "event_id": str(letter.event_id),
                "event_type": letter.event_type,
                "event_date_time": letter.event_date_time.isoformat(),
                "error_code": letter.error_code,
                "error": letter.error,
                "attempts": letter.attempts,
                "dead_lettered_at": letter.dead_lettered_at.isoformat(),
            }
            if as_json:
                self.stdout.write(json.dumps(row))
            else:
                self.stdout.write(
                    f"{row['id']:>6}  {row['event_type']:<24} {row['event_id']}  "
                    f"code={row['error_code']}  {row['error'][:80]}"
                )
