"""The one dead-letter writer: what every consumer (the tiers, the lane, the review console)
sends to the dead-letter topic for a record it cannot take, and the log line that says so.

A dead letter is the record as it came (key, value, the headers it propagates) plus the
``x-escalator-*`` headers of ``contract.messages.dead_letter_headers``: why (reason, error
class and message), where from (topic, partition, offset, tier) and when. Each caller counts
it in its own metrics; it goes out through the engine's delivery like any output, so its
record's offset is committed only once the dead letter is acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from escalator.contract.messages import dead_letter_headers, propagated_headers
from escalator.engine.delivery import Output
from escalator.engine.worker import Record
from escalator.errors import PermanentError
from escalator.observability.logs import log


def dead_letter(
    record: Record,
    error: PermanentError,
    *,
    tier: str,
    topic: str,
    logger: logging.Logger,
    extra: Sequence[tuple[str, bytes]] = (),
) -> Output:
    """The dead letter of ``record`` on ``topic``, logged on the caller's ``logger`` (each
    kind of consumer keeps its own); ``extra`` headers go after ours."""
    log(
        logger,
        "dead_letter",
        logging.WARNING,
        tier=tier,
        reason=error.reason,
        error=str(error)[:300],
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
    )
    headers = dead_letter_headers(
        propagated_headers(record.headers),
        reason=error.reason,
        error=error,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        tier=tier,
    )
    return Output(topic, record.value or b"", record.key, [*headers, *extra])
