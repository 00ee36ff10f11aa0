from __future__ import annotations

import getpass
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from event_log.control import RelayControlState, relay_control, relays_pause, relays_resume


class Command(BaseCommand):
    help = (
        "Pause or resume every relay (a flag in PostgreSQL each relay reads before it "
        "claims), or show the flag."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        pause = actions.add_parser("pause", help="relays claim nothing until resumed")
        pause.add_argument("--reason", default="", help="why, shown in the admin and status")
        actions.add_parser("resume", help="relays claim again from their next run")
        show = actions.add_parser("status", help="show the flag")
        show.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        by = f"{getpass.getuser()} (manage.py)"
        if action == "pause":
            state = relays_pause(by=by, reason=options["reason"])
        elif action == "resume":
            state = relays_resume(by=by)
        else:
            state = relay_control()
            if options["json"]:
                self.stdout.write(json.dumps(state.as_dict(), sort_keys=True))
                return
        self.stdout.write(_describe(state))


def _describe(state: RelayControlState) -> str:
    if not state.paused:
        return "relays running"
    since = state.paused_at.isoformat() if state.paused_at else "?"
    reason = f": {state.reason}" if state.reason else ""
    return f"relays paused since {since} by {state.paused_by}{reason}"
