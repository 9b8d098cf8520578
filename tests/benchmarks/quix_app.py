"""B1q's peer: a Quix Streams application doing the cheap tier's plumbing.

It runs in its own virtualenv (``make bench`` makes it, ``.bench/quix``), never in Escalator's:
it imports nothing from the project. Per request it parses the JSON value and produces a
result-sized and a decision-sized JSON record (the sizes of Escalator's result and
decisions-log record), at-least-once. It prints one JSON line with the wall-clock time of
its first record and, at the N-th, stops the application: Quix Streams then flushes its
producer and commits (its checkpoint) on the way out. The harness times it to the moment the
broker shows all N offsets committed, as it does for Escalator, which it stops the same way.

    .bench/quix/bin/python tests/benchmarks/quix_app.py BOOTSTRAP INPUT OUTPUT GROUP N
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from quixstreams import Application

#: Padding so that the serialized records are about 720 and 480 bytes, as in the other sides.
RESULT_PAD = "r" * 560
DECISION_PAD = "d" * 330


def main(bootstrap: str, source: str, sink: str, group: str, n: int) -> None:
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        use_changelog_topics=False,
        loglevel="WARNING",
    )
    requests = app.topic(source, value_deserializer="json", key_deserializer="bytes")
    outputs = app.topic(sink, value_serializer="json", key_serializer="bytes")
    seen = [0]

    def answer(request: dict[str, Any]) -> list[dict[str, Any]]:
        if not seen[0]:
            print(json.dumps({"first": time.time()}), flush=True)
        seen[0] += 1
        if seen[0] == n:
            app.stop()  # this record is still produced; then the final flush and commit
        rid = request["id"]
        return [
            {
                "id": rid,
                "label": "safe",
                "confidence": 0.95,
                "tier": "cheap",
                "model": "instant",
                "pad": RESULT_PAD,
            },
            {
                "id": rid,
                "outcome": "answered",
                "tier": "cheap",
                "tokens": [90, 10, 0, 1290],
                "pad": DECISION_PAD,
            },
        ]

    sdf = app.dataframe(topic=requests)
    sdf = sdf.apply(answer, expand=True)
    sdf.to_topic(outputs)
    app.run()


if __name__ == "__main__":
    bootstrap_, source_, sink_, group_, n_ = sys.argv[1:6]
    main(bootstrap_, source_, sink_, group_, int(n_))
