"""``escalator parked summary|replay``: what the retention watch parked while a hold lasted,
and sending it back into the pipeline once the hold is over.

Parked records are not dead letters: each is a request (or an escalation, or a review item)
that nobody could answer before its input topic's retention would have deleted it. Replay is
a command, not automatic: after a spend cap, resuming costs money and the operator decides
when (having raised the cap, or on the 1st); several pods replaying on their own would need a
coordinator; and a replay during a hold that still lasts would only park the records again.
So ``replay`` refuses while a parked record says the API's hold has not ended yet (``--force``
when the cap was raised sooner). See docs/OPERATIONS.md, "Holds that outlast retention".
"""

from __future__ import annotations

import argparse
import asyncio

from escalator.cli._common import settings_from_env
from escalator.contract.messages import iso_from
from escalator.errors import EscalatorError
from escalator.kafka.clients import check_connection
from escalator.kafka.parked import ParkedScan, hold_not_over, scan_parked


def _print(topic: str, scan: ParkedScan) -> None:
    print(
        f"parked topic {topic}: {scan.total} waiting to be replayed; the replay group is past "
        f"{scan.offsets_replayed} offset(s)"
    )
    for (source, reason), count in sorted(scan.waiting.items()):
        print(f"  {source}: {count} ({reason})")
    if scan.unreplayable:
        print(f"  not replayable (source is not an input topic): {scan.unreplayable}")
    if scan.held_since_ms is not None:
        print(f"  held since {iso_from(scan.held_since_ms / 1000)}")
    if scan.hold_ends_at is not None:
        print(f"  the API said the hold ends at {scan.hold_ends_at}")


def cmd_parked(args: argparse.Namespace) -> int:
    settings = settings_from_env()
    replay = args.action == "replay" and not args.dry_run

    async def main() -> tuple[ParkedScan, ParkedScan | None]:
        await check_connection(settings.kafka)
        before = await scan_parked(settings)
        if not replay or before.total == 0:
            return before, None
        if before.unreplayable:
            raise EscalatorError(
                f"{before.unreplayable} parked record(s) come from topics that are not this "
                "configuration's input topics: set the ESCALATOR_*_TOPIC variables as they were "
                "when the records were parked; nothing was replayed"
            )
        why = hold_not_over(before)
        if why is not None and not args.force:
            raise EscalatorError(
                f"not replaying: {why}; the records would be held and parked again. Replay "
                "after that, or with --force once the cap is raised (check with escalator doctor)"
            )
        return before, await scan_parked(settings, replay=True)

    before, after = asyncio.run(main())
    _print(settings.topics.parked, before)
    if after is not None:
        print(f"replayed {after.replayed} record(s) to their source topics")
    elif args.action == "replay":
        print("dry run: nothing was published" if args.dry_run else "nothing to replay")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "parked",
        help="count the records parked during a hold, or replay them to their source topics",
    )
    p.add_argument(
        "action",
        choices=["summary", "replay"],
        help="summary: count what waits by source and hold; replay: send it back to its topic",
    )
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed")
    p.add_argument(
        "--force", action="store_true", help="replay although the API said the hold lasts"
    )
    p.set_defaults(func=cmd_parked)
