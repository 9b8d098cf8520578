"""``escalator parked summary|replay`` (cli/parked.py) over a fake parked-topic scan: what the
summary says, and when a replay goes ahead or is refused (a hold the API says still lasts,
records from topics that are not input topics). The scan and replay themselves:
tests/integration/test_retention_parking.py."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest

from escalator.cli import parked
from escalator.cli.main import main
from escalator.kafka.parked import ParkedScan
from tests.unit.cli.test_main import clean_env  # noqa: F401 (a fixture)

PAST = "2020-01-01T00:00:00Z"
FUTURE = "2999-01-01T00:00:00Z"


@dataclass
class Topic:
    """What the parked topic holds, and each replay asked of it."""

    scan: ParkedScan
    replays: list[bool] = field(default_factory=list)


def waiting(hold_ends_at: str | None = PAST, unreplayable: int = 0) -> ParkedScan:
    return ParkedScan(
        waiting=Counter({("escalator.requests", "spend_limit"): 3, ("escalator.reviews", "x"): 1}),
        offsets_replayed=7,
        unreplayable=unreplayable,
        held_since_ms=1_796_889_600_000,
        hold_ends_at=hold_ends_at,
    )


@pytest.fixture
def topic(clean_env: pytest.MonkeyPatch) -> Topic:  # noqa: F811
    fake = Topic(waiting())

    async def check_connection(kafka: object) -> None:
        return None

    async def scan_parked(settings: object, *, replay: bool = False) -> ParkedScan:
        fake.replays.append(replay)
        if not replay:
            return fake.scan
        return ParkedScan(replayed=fake.scan.total - fake.scan.unreplayable)

    clean_env.setattr(parked, "check_connection", check_connection)
    clean_env.setattr(parked, "scan_parked", scan_parked)
    return fake


def test_the_summary_says_what_waits_by_source_and_the_hold(
    topic: Topic, capsys: pytest.CaptureFixture[str]
) -> None:
    """The total and the replay group's position, each (source, reason) sorted, the records
    that cannot be replayed, when the hold began and when the API said it ends; no replay."""
    topic.scan = waiting(unreplayable=2)
    assert main(["parked", "summary"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "parked topic escalator.parked: 6 waiting to be replayed; the replay group is past 7 "
        "offset(s)",
        "  escalator.requests: 3 (spend_limit)",
        "  escalator.reviews: 1 (x)",
        "  not replayable (source is not an input topic): 2",
        "  held since 2026-12-10T08:00:00.000Z",
        f"  the API said the hold ends at {PAST}",
    ]
    assert topic.replays == [False]


def test_a_replay_after_the_hold_sends_everything_back(
    topic: Topic, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hold's announced end has passed: the records are replayed and counted."""
    assert main(["parked", "replay"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "replayed 4 record(s) to their source topics"
    assert topic.replays == [False, True]


def test_a_replay_while_the_api_says_the_hold_lasts_is_refused_unless_forced(
    topic: Topic, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hold ends in the future: one line naming the end and --force, exit 2, nothing
    replayed; with --force the replay goes ahead."""
    topic.scan = waiting(hold_ends_at=FUTURE)
    assert main(["parked", "replay"]) == 2
    err = capsys.readouterr().err
    assert f"not replaying: the API said the hold ends at {FUTURE}" in err and "--force" in err
    assert topic.replays == [False]
    assert main(["parked", "replay", "--force"]) == 0
    assert topic.replays == [False, False, True]


def test_records_from_other_topics_block_a_replay_naming_the_variables(
    topic: Topic, capsys: pytest.CaptureFixture[str]
) -> None:
    """Some records come from topics this configuration does not read: refused, naming the
    ESCALATOR_*_TOPIC variables, even with --force; nothing replayed."""
    topic.scan = waiting(unreplayable=1)
    assert main(["parked", "replay", "--force"]) == 2
    err = capsys.readouterr().err
    assert "1 parked record(s) come from topics that are not" in err
    assert "ESCALATOR_*_TOPIC" in err
    assert topic.replays == [False]


@pytest.mark.parametrize(
    ("argv", "scan", "last"),
    [
        (["replay", "--dry-run"], waiting(hold_ends_at=FUTURE), "dry run: nothing was published"),
        (["replay"], ParkedScan(), "nothing to replay"),
    ],
)
def test_a_dry_run_or_an_empty_topic_replays_nothing_and_says_so(
    argv: list[str],
    scan: ParkedScan,
    last: str,
    topic: Topic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--dry-run only counts (the hold is not even checked); an empty topic has nothing to
    replay."""
    topic.scan = scan
    assert main(["parked", *argv]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == last
    assert topic.replays == [False]
