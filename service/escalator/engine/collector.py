"""Python's cyclic garbage collector, tuned for a long-running consumer
(``ESCALATOR_GC_TUNING``, on by default).

With CPython's defaults (a young collection every 700 net allocations of container objects)
the per-record path (records, requests, answers, outputs, futures) sets off a young collection
every few records and a full one every few thousand, and a full collection walks every object
the process holds: the SDK, aiokafka, the metrics, the settings. Measured on the cheap tier with
an instant model: 12-18 µs of collector time per record, about an eighth of its CPU
(BENCHMARKS.md, "Per-record CPU").

Once the service has started, what it built is moved to the permanent generation
(:func:`gc.freeze`), where no collection looks at it again, and the young generation is
collected every :data:`YOUNG` allocations instead. Almost everything the per-record path
allocates is freed by reference counting anyway; the collector is only there for cycles
(exceptions with their tracebacks, some futures), which still go, a little later. Leaving the
service (``Service.close``) restores the thresholds it found and unfreezes what it froze.

The trade-off: an object built at start-up that later becomes part of a garbage cycle (a
client's connection replaced on reconnect, say) is not collected while the service runs, and
cycles that reach the oldest generation wait longer. What start-up builds is a fixed amount,
so this is bounded by it, not by the traffic; B5 (peak RSS on a backlog) measures the rest.
Nested blocks (two services in one process) tune and restore once, at the outermost.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Net allocations of container objects between two young collections (CPython: 700).
YOUNG = 20_000
#: Young collections between two of the middle generation, and middle between two full ones
#: (CPython: 10 and 10; 3.12+ gives the full ones their own heuristic as well).
OLDER = 20
#: Blocks entered and not left (the tuning is done and undone at the outermost only), and
#: the thresholds found when the first was entered.
_depth = 0
_found: tuple[int, ...] = ()


@contextlib.contextmanager
def tuned(enabled: bool = True) -> Iterator[None]:
    """Freeze what exists and collect less often, until the block ends; a no-op when not
    ``enabled`` or when the collector is off (someone else manages it)."""
    global _depth, _found
    if not enabled or (_depth == 0 and not gc.isenabled()):
        yield
        return
    if _depth == 0:
        _found = gc.get_threshold()
        gc.collect()  # what start-up left as garbage is not frozen with the rest
        gc.freeze()
        gc.set_threshold(YOUNG, OLDER, OLDER)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            gc.set_threshold(*_found)
            gc.unfreeze()
