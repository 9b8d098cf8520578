"""The lane's batches in flight: handed-off requests join the open batch of their model
(``assembly.py``), which is submitted once cut, recorded on the state topic before and after
the create call (``state.py``), polled until it ends, and whose results go back to the records
waiting for them (:meth:`BatchRunner.join`).

A record waits in ``join`` until its result is in, so the engine commits its hand-off offset
only once what it led to is delivered. After a crash or a rebalance the records come again:
the runner has read the open batches from the state topic on entry, so a record whose custom
id is in a submitted batch waits for that batch (polled, never created again: no second
bill), and one whose batch already ended gets its result from the kept results. A batch is
closed (its tombstone written) once it has ended and the lane group has committed every
member's hand-off offset: only then can none of its records come again. Committed, not
delivered here: a batch's members may be answered by several workers (a rebalance splits its
partitions), or partly before a crash (those never come again), and a member delivered but
not yet committed when its worker dies comes again and must find its batch.

An intent without a batch id (a kill between the create call and its state record, or a
create that failed in a way that may still have created the batch) is *adopted*, never
submitted blindly again: the runner lists the batches the API created since the intent
(less :data:`ADOPT_SKEW_MS` for the two clocks) and adopts the one whose results name exactly
the intent's custom ids (its id is written under the intent's key, and it is polled like any
other). A batch of the intent's size still running may be it, so the intent waits for it to
end; when no batch can be it and the intent is older than the grace
(:attr:`BatchRunner.adopt_grace_s`: the create's timeout, :attr:`BatchRunner.create_timeout_s`,
after which a worker gives its create up, plus :data:`ADOPT_MARGIN_S`), the intent is closed
(its tombstone) and its members, as they come, join a new batch. Until then they wait (the
lane handler's deadline timer answers them in real time if that takes too long, and those
whose deadline cannot wait for the grace and a batch are answered in real time at once).

A rebalance while the old owner submits a batch with members of a revoked partition (its intent
write or its create under way): :meth:`BatchRunner.give_up` drops their entries, and once the
intent is acknowledged the old owner looks: a member gone closes the intent and creates nothing
(the rest wait again). So the old owner's create holds only members it still owned when its
intent was acknowledged: before its revocation, so before the next owner's assignment and the
state read that follows it (:meth:`BatchRunner.refresh`), which finds the intent. The next
owner holds those members and closes that intent only past the grace, when the old owner's
create has ended (or been given up) and its batch, if any, is listed: adopted, never created
again. If the next owner read an intent the old owner then closed that way, it waits the grace
before it batches those members. And after an assignment the next intent reads the state topic
again first: members found in another worker's intent or batch leave it and wait for that one.
What is left: an old owner not told of its revocation before the next owner's assignment (a
zombie: its session expired or its loop stalled, so the group moved on without it) whose intent
lands after that second read still creates its batch; and the grace assumes the two workers'
clocks within about :data:`ADOPT_MARGIN_S` of each other.

The batch rate limits (``limits.py``): every call to the API is paced under
ESCALATOR_LANE_RPM, and a batch is submitted only while the batch requests of the batches not
ended (:meth:`BatchRunner.queued`) leave room for it under ESCALATOR_LANE_QUEUE_LIMIT. A batch
that does not fit stays cut, first in line, until one ends; its members whose deadline the wait
would miss are answered in real time meanwhile (``join`` gives them None, the lane handler's
deadline fallback). A 429 (or a 529) on create means no batch was created: its intent is closed
and the batch waits again, first in line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka.errors import KafkaError

from escalator.contract.messages import text_json
from escalator.errors import ApiBlocked, EscalatorError, ModelRejected, ModelUnavailable
from escalator.lane.assembly import MAX_REQUESTS, Assembly, Batch, Member, custom_id, place_of
from escalator.lane.batches import BatchApi, BatchGone, ItemResult
from escalator.lane.deadlines import CompletionTimes
from escalator.lane.limits import Line, PacedBatches, Pacer, too_late
from escalator.lane.state import BatchState
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics

logger = logging.getLogger("escalator.lane")

#: How much earlier than an intent a batch it led to may seem created (the API's clock
#: against the worker's): the list call looks back this much further.
ADOPT_SKEW_MS = 300_000
#: How long a create call may take, counted from its intent (the intent's write and the
#: pacer's wait included), when the API client states no timeout of its own: the default of
#: ESCALATOR_MODEL_TIMEOUT_S, the timeout of the client the lane shares (``max_retries=0``).
CREATE_TIMEOUT_S = 30.0
#: Added to the create's timeout for the grace of an intent (:attr:`BatchRunner.adopt_grace_s`):
#: the API finishing a create whose caller has gone, and the two workers' clocks.
ADOPT_MARGIN_S = 30.0
#: What a create can fail with having created nothing (``model.adapter.translate_error``'s
#: kinds): a 429 and a 529 refuse the request before it is processed.
REFUSED = frozenset({"rate_limit", "overloaded"})


class StateLog(Protocol):
    """The compacted state topic."""

    async def read(self) -> dict[bytes, BatchState]:
        """The open batches (``state.open_batches`` over the topic read to its end)."""
        ...

    async def write(self, state: BatchState) -> None:
        """Write ``state`` under its key and wait for the acknowledgement."""
        ...

    async def close(self, key: bytes) -> None:
        """Write the tombstone of ``key`` and wait for the acknowledgement."""
        ...

    async def committed(self) -> dict[int, int]:
        """The lane group's committed offset per hand-off partition (none: left out)."""
        ...


class BatchRunner:
    """Assembly, submission, polling and results of the lane's batches (an async context
    manager: the loop that cuts and polls runs inside it)."""

    def __init__(
        self,
        api: BatchApi,
        state: StateLog,
        *,
        max_age_s: float,
        poll_s: float = 5.0,
        times: CompletionTimes | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        rpm: int | None = None,
        queue_limit: int | None = None,
        fallback_s: float = 0.0,
        create_timeout_s: float | None = None,
        **limits: int,
    ) -> None:
        self._metrics = metrics
        #: A create call is given up this long after its intent; an intent younger than the
        #: grace may still have a create under way (another worker's): it is never closed.
        self.create_timeout_s = create_timeout_s or _timeout_s(api)
        self.adopt_grace_s = self.create_timeout_s + ADOPT_MARGIN_S
        self._paced = PacedBatches(api, Pacer(rpm), self._rate_limited) if rpm is not None else None
        self._api: BatchApi = self._paced or api
        self._state = state
        #: ESCALATOR_LANE_QUEUE_LIMIT (None: not counted); no batch is cut larger than it.
        self.queue_limit = queue_limit
        if queue_limit is not None:
            limits["max_requests"] = min(limits.get("max_requests", MAX_REQUESTS), queue_limit)
            if metrics is not None:
                metrics.lane_queue_limit.set(queue_limit)
        self.fallback_s = fallback_s
        self._assembly = Assembly(max_age_s=max_age_s, **limits)
        self.poll_s = poll_s
        self.times = times or CompletionTimes(3600.0)
        self._clock = clock
        #: Each waiting member's entry in its batch's create body, ``{"custom_id", "params"}``
        #: as JSON: bytes, not the params, whose prompt holds the text escaped (up to five
        #: characters each) in a Python string (up to four bytes a character): docs/
        #: OPERATIONS.md, "The batch lane's memory".
        self._entries: dict[str, bytes] = {}
        #: Each waiting member's absolute deadline (epoch ms), when it has one.
        self._deadlines: dict[str, int] = {}
        #: None: answer it in real time (its batch was held back past its deadline).
        self._waiters: dict[str, asyncio.Future[ItemResult | None]] = {}
        #: Submitted batches not closed, by state key; and each member's batch key.
        self._open: dict[bytes, BatchState] = {}
        self._batch_of: dict[str, bytes] = {}
        #: Results of ended batches not closed yet.
        self._results: dict[bytes, dict[str, ItemResult]] = {}
        self._line = Line()
        #: Intents without a batch id, by state key; each member's intent key; the batches
        #: already read and found not to be an intent's; intents closed here.
        self._intents: dict[bytes, BatchState] = {}
        self._intent_of: dict[str, bytes] = {}
        self._not_it: dict[bytes, set[str]] = {}
        self._closed: set[bytes] = set()
        #: The intent whose create call is under way (a re-read must not take it for a lost one).
        self._submitting: bytes | None = None
        self._loop: asyncio.Task[None] | None = None
        #: Set while what the state topic says is known here: a record joins only then.
        self._fresh = asyncio.Event()
        self._refreshing: set[asyncio.Task[None]] = set()
        #: What ended the lane's loop or a re-read unexpectedly (a record on the state topic that
        #: is not a state, a defect): every join raises it from then on, so the lane's worker
        #: stops loudly instead of its records waiting for ever.
        self._failed: BaseException | None = None
        #: Assignments so far, and how many of them a read begun before an intent followed:
        #: the next intent after an assignment reads the state topic again first (the old
        #: owner's intent may have landed after the assignment's own read).
        self._assignments = 0
        self._rechecked = 0
        self.created = 0

    async def __aenter__(self) -> BatchRunner:
        await self._read()
        self._loop = asyncio.create_task(self._run(), name="batch-lane")
        self._loop.add_done_callback(self._ended)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in [*self._refreshing, *([self._loop] if self._loop else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read(self, *, fresh: bool = True) -> None:
        """Track every submitted batch the state topic holds open (the same batch is polled
        again, never created again); members found in one, or in an intent, leave the batches
        being assembled or cut here. ``fresh``: records may join once it is done."""
        found: set[str] = set()
        for key, state in (await self._state.read()).items():
            if key in self._open or key in self._intents or key in self._closed:
                continue
            if state.batch_id is None:
                if key != self._submitting:
                    self._hold(key, state)
                    if key in self._intents:
                        found.update(state.members)
                continue
            self._track(key, state)
            found.update(state.members)
        if found:
            self._leave(found)
        if fresh:
            self._fresh.set()

    def _leave(self, found: set[str]) -> None:
        """``found`` are in another batch or intent: out of those not sent yet. Entries stay
        for a member held for an intent (its close enqueues it again)."""
        for cid in found:
            self._assembly.withdraw(*place_of(cid))
        self._line.drop(lambda m: m.custom_id in found)
        for cid in found:
            if cid in self._batch_of:
                self._entries.pop(cid, None)

    def refresh(self) -> None:
        """Partitions were assigned: read the state topic again before their records join
        (another worker may have submitted their batches)."""
        if self._failed is not None:
            return  # failed for good: every join raises, none waits for a read
        self._fresh.clear()
        self._assignments += 1
        task = asyncio.create_task(self._reread(), name="batch-lane-refresh")
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A task of the lane raised what it does not retry: fail every record waiting, and
        every join from now on, with its error."""
        if task.cancelled() or (exc := task.exception()) is None:
            return
        self._fresh.set()  # joins waiting for a read raise it too
        if self._failed is not None:
            return
        self._failed = exc
        log(logger, "lane_failed", logging.ERROR, task=task.get_name(), error=repr(exc)[:300])
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(exc)

    async def _reread(self) -> None:
        while True:
            try:
                await self._read()
            except (EscalatorError, KafkaError, OSError) as exc:
                # EscalatorError: kafka/clients.py's own, e.g. the topic's metadata missing.
                log(logger, "lane_state_read_failed", logging.WARNING, error=str(exc)[:300])
                await asyncio.sleep(self.poll_s)
            else:
                return

    def waiting(self) -> int:
        """Requests not yet in a submitted batch."""
        return self._assembly.waiting()

    async def join(
        self,
        model: str,
        partition: int,
        offset: int,
        params: dict[str, Any],
        deadline_ms: int | None = None,
    ) -> ItemResult | None:
        """The result for the hand-off record at ``partition``/``offset``: from the batch it
        is already in (recorded), else from the open batch of ``model`` it joins now. None:
        its batch was held back by the queue limit past what its deadline (absolute, epoch ms)
        allows: answer it in real time now. ``params`` are encoded at once and not kept:
        pass them as an expression, so that no caller's frame keeps them while it waits."""
        cid = custom_id(partition, offset)
        # Copied to its own size (text_json): thousands wait, for hours.
        entry = text_json({"custom_id": cid, "params": params})
        del params
        if self._failed is None:
            await self._fresh.wait()
        if self._failed is not None:
            raise self._failed
        if deadline_ms is not None:
            self._deadlines[cid] = deadline_ms
        waiter = self._waiters.get(cid)
        if waiter is None or waiter.done():
            waiter = self._waiters[cid] = asyncio.get_running_loop().create_future()
        key = self._batch_of.get(cid)
        if key is not None:
            kept = self._results.get(key, {}).get(cid)
            if kept is not None:
                self._resolve(kept)
        elif cid in self._intent_of:
            self._entries[cid] = entry  # held until its intent is adopted or closed
        elif cid not in self._entries:
            self._enqueue(model, cid, entry, self._clock())
        del entry
        return await waiter

    def _enqueue(self, model: str, cid: str, entry: bytes, since_s: float) -> None:
        """``entry``: ``cid``'s ``{"custom_id", "params"}`` as JSON; its size in the body."""
        self._entries[cid] = entry
        size = len(entry)
        partition, offset = place_of(cid)
        try:
            self._line.batches += self._assembly.add(
                model, Member(partition, offset, size, since_s)
            )
        except ValueError:  # larger than a whole batch: the real-time path answers it
            self._entries.pop(cid, None)
            self._resolve(ItemResult(cid, "errored", error="request_too_large"))

    def delivered(self, partition: int, offset: int) -> None:
        """The record's outputs are delivered: it waits no more (its batch closes once the
        group has committed every member, :meth:`tick`)."""
        waiter = self._waiters.get(custom_id(partition, offset))
        if waiter is not None and waiter.done():
            del self._waiters[custom_id(partition, offset)]

    def give_up(self, partitions: set[int]) -> None:
        """These hand-off partitions are no longer ours: their waiting records end (the next
        owner redoes them)."""
        for cid in self._assembly.drop(partitions):
            self._entries.pop(cid, None)  # not submitted: the next owner batches it
        for cid in [c for c in self._intent_of if place_of(c)[0] in partitions]:
            self._entries.pop(cid, None)  # held for an intent: the next owner's, too
        for cid in self._line.drop(lambda m: m.partition in partitions):
            self._entries.pop(cid, None)  # cut, held back by the queue limit: the next owner's
        for m in self._line.sending.members if self._line.sending is not None else []:
            # In its intent: created only if that was acknowledged before now (``_submit``).
            if m.partition in partitions:
                self._entries.pop(m.custom_id, None)
        for cid in [c for c in self._deadlines if place_of(c)[0] in partitions]:
            del self._deadlines[cid]
        for cid, waiter in list(self._waiters.items()):
            if place_of(cid)[0] in partitions and not waiter.done():
                waiter.cancel()

    def withdraw(self, partition: int, offset: int) -> None:
        """The record is answered another way (its deadline came first): it leaves the batch
        being assembled, or its intent's resubmission; a submitted item's result is ignored."""
        cid = custom_id(partition, offset)
        self._assembly.withdraw(partition, offset)
        self._line.drop(lambda m: m.custom_id == cid)
        # Not in a submitted batch: left out of the batch it was to join (one being created
        # took its entry already; after a 429 it waits again without this one).
        self._entries.pop(cid, None)
        self._deadlines.pop(cid, None)
        waiter = self._waiters.pop(cid, None)
        if waiter is not None and not waiter.done():
            waiter.cancel()

    def in_flight(self) -> tuple[int, float]:
        """Batches submitted and not ended, and the oldest one's age since submission (s)."""
        now_ms = self._clock() * 1000
        ages = [
            (now_ms - s.submitted_ms) / 1000
            for k, s in self._open.items()
            if k not in self._results and s.submitted_ms is not None
        ]
        return len(ages), max(ages, default=0.0)

    def queued(self) -> int:
        """Batch requests in the processing queue, as counted here: the members of every
        batch submitted and not ended (this worker's, and those it read on the state topic),
        and of every intent that may have created one. An upper bound: the API counts only
        those not processed yet."""
        running = sum(len(s.members) for k, s in self._open.items() if k not in self._results)
        return running + sum(len(i.members) for i in self._intents.values())

    def gauges(self) -> None:
        """Set the lane's gauges (after each round)."""
        if self._metrics is None:
            return
        self._metrics.lane_queued.set(self.queued())
        batches, oldest = self.in_flight()
        self._metrics.lane_waiting.set(sum(1 for w in self._waiters.values() if not w.done()))
        self._metrics.lane_batches.set(batches)
        self._metrics.lane_oldest_age.set(oldest)
        self._metrics.lane_expected.set(self.times.expected_s())

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except (EscalatorError, KafkaError, OSError) as exc:
                # The API or the broker: the round is tried again (a batch not created stays
                # cut, one not collected stays open); records keep waiting, never lost.
                log(logger, "lane_round_failed", logging.WARNING, error=str(exc)[:300])
            self.gauges()
            await asyncio.sleep(self.poll_s)

    async def tick(self) -> None:
        """One round: adopt or close the intents, submit what is cut or due, poll what is
        submitted, close what is done."""
        for key, intent in list(self._intents.items()):
            await self._adopt(key, intent)
        self._line.batches += self._assembly.due(self._clock())
        while self._line:
            batch = self._line.first()
            if self._fits(batch):
                await self._submit(batch)
            elif self._hold_back(batch):
                break
        for key, state in list(self._open.items()):
            if key not in self._results and state.batch_id is not None:
                try:
                    if await self._api.ended(state.batch_id):
                        await self._collect(key, state)
                except BatchGone as exc:
                    self._gone(key, state, exc)
        await self._close_done()

    def _gone(self, key: bytes, state: BatchState, exc: BatchGone) -> None:
        """The API knows ``state``'s batch no more: its members are answered in real time
        (``errored``, as a refused batch's), and it closes as an ended one does. Retrying would
        hold every batch polled after it for ever."""
        log(logger, "lane_batch_gone", logging.ERROR, batch_id=state.batch_id, error=str(exc))
        self._settle(key, {m: ItemResult(m, "errored", error="batch_gone") for m in state.members})

    async def _close_done(self) -> None:
        """Close every ended batch none of whose members can come again: each one's hand-off
        offset is committed by the lane group (asked only when no member still waits here)."""
        ended = [
            (key, state)
            for key, state in self._open.items()
            if key in self._results and not any(self._pending(m) for m in state.members)
        ]
        if not ended:
            return
        committed = await self._state.committed()
        for key, state in ended:
            if all(place_of(m)[1] < committed.get(place_of(m)[0], 0) for m in state.members):
                await self._state.close(key)
                log(logger, "lane_batch_closed", batch_id=state.batch_id, size=len(state.members))
                del self._open[key], self._results[key]
                for m in state.members:
                    self._batch_of.pop(m, None)
                    self._waiters.pop(m, None)

    def _pending(self, cid: str) -> bool:
        waiter = self._waiters.get(cid)
        return waiter is not None and not waiter.done()

    def _fits(self, batch: Batch) -> bool:
        """The processing queue has room for ``batch`` under the limit."""
        return self.queue_limit is None or self.queued() + len(batch.members) <= self.queue_limit

    def _hold_back(self, batch: Batch) -> bool:
        """``batch`` waits for room in the queue (counted once); the members of every cut
        batch that cannot wait that long are answered in real time now. False when ``batch``
        has no member left (the next one is looked at)."""
        if self._line.held(batch):
            log(logger, "lane_batch_held", queued=self.queued(), size=len(batch.members))
            if self._metrics is not None:
                self._metrics.lane_queue_holds.inc()
        late = set(
            too_late(
                (m.custom_id for m in self._line.members()),
                self._deadlines,
                now_s=self._clock(),
                expected_s=self.times.expected_s(),
                fallback_s=self.fallback_s,
            )
        )
        self._real_time(self._line.drop(lambda m: m.custom_id in late))
        return bool(self._line) and self._line.first() is batch

    def _real_time(self, members: list[str]) -> None:
        """``members`` wait no more: ``join`` gives them None (the deadline fallback, now)."""
        for cid in members:
            self._entries.pop(cid, None)
            self._deadlines.pop(cid, None)
            waiter = self._waiters.get(cid)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _submit(self, batch: Batch) -> None:
        """Intent, create, then the batch id: in that order on the state topic. A batch whose
        intent could not be written stays cut (tried again); once the intent is written it
        leaves the cut list, and a create that fails leaves an intent to adopt or close (or,
        refused for the rate limits, the batch first in line again). After an assignment the
        state topic is read first; a member revoked or withdrawn while the intent was written
        closes the intent, creating nothing (the module's docstring: a rebalance)."""
        if self._rechecked < self._assignments:
            assignments = self._assignments
            await self._read(fresh=False)
            self._rechecked = assignments
        self._line.drop(lambda m: m.custom_id not in self._entries)  # gone since it was cut
        if batch not in self._line.batches:
            return
        if self._paced is not None:
            # The create may go once the intent is written: its timeout, counted from the
            # intent, is never spent waiting out a 429's hold.
            await self._paced.reserve()
            if any(m.custom_id not in self._entries for m in batch.members):
                self._paced.unreserve()
                return  # revoked or withdrawn meanwhile: cut again next round
        members = tuple(m.custom_id for m in batch.members)
        entries = [self._entries[m] for m in members]
        intent = BatchState(batch.model, members, int(self._clock() * 1000))
        self._submitting, self._line.sending = intent.key, batch
        try:
            await self._state.write(intent)
            self._line.batches.remove(batch)
            if any(m not in self._entries for m in members):
                # Revoked (or withdrawn) while the intent was written: the next owner may not
                # have seen it. Nothing is created; the rest wait again.
                await self._put_back(intent, batch)
                return
            batch_id = await self._create(intent, entries, batch)
        finally:
            self._submitting, self._line.sending = None, None
            if self._paced is not None:
                self._paced.unreserve()
        if batch_id is None:
            return
        self.created += 1
        state = intent.submitted(batch_id, int(self._clock() * 1000))
        try:
            await self._state.write(state)
        except Exception:
            # The batch exists but its id is not recorded: adopted by a later round, as after
            # a kill at this point (never created again).
            self._hold(intent.key, intent)
            raise
        log(logger, "lane_batch_submitted", batch_id=batch_id, model=batch.model, size=len(members))
        for m in members:
            self._entries.pop(m, None)
            self._deadlines.pop(m, None)
        self._track(state.key, state)

    async def _create(self, intent: BatchState, entries: list[bytes], batch: Batch) -> str | None:
        """The batch id; None when the batch was refused whole (its members then go to the
        real-time path). A 429 (the rate limits), a 529 (overloaded) or an account hold
        created nothing: the intent is closed and the batch waits, first in line (the pacer
        holds the calls for the 429's retry-after). Any other failure may have created the
        batch all the same (a timeout after the API took it, which includes a call given up
        :attr:`create_timeout_s` after its intent): the intent is held, and a later round
        adopts it or, past the grace, closes it."""
        members = intent.members
        left_s = self.create_timeout_s - (self._clock() - intent.intent_ms / 1000)
        try:
            try:
                async with asyncio.timeout(max(left_s, 0.0)):
                    return await self._api.create(entries)
            except TimeoutError as exc:
                # Given up, so that it ends within the grace another worker gives the intent.
                raise ModelUnavailable("batch create timed out", kind="timeout") from exc
        except ModelRejected as exc:
            # The batch as a whole is refused: each member goes to the real-time path.
            log(logger, "lane_batch_refused", logging.WARNING, error=str(exc)[:300])
            await self._state.close(intent.key)
            for m in members:
                self._entries.pop(m, None)
                self._resolve(ItemResult(m, "errored", error="batch_refused"))
            return None
        except ModelUnavailable as exc:
            if exc.kind in REFUSED or isinstance(exc, ApiBlocked):
                await self._put_back(intent, batch)
            else:
                self._hold(intent.key, intent)
            raise
        except Exception:
            self._hold(intent.key, intent)
            raise

    async def _put_back(self, intent: BatchState, batch: Batch) -> None:
        """``intent`` created nothing: closed, and ``batch`` first in line again without the
        members withdrawn or revoked while it was being sent."""
        try:
            await self._state.close(intent.key)
        except Exception:
            self._hold(intent.key, intent)  # adopted or closed by a later round
            raise
        self._line.put_back(batch, lambda m: m.custom_id in self._entries)

    def _rate_limited(self) -> None:
        log(logger, "lane_rate_limited", logging.WARNING)
        if self._metrics is not None:
            self._metrics.lane_rate_limited.inc()

    def _hold(self, key: bytes, intent: BatchState) -> None:
        """An intent without a batch id: its members wait until it is adopted or closed."""
        if key in self._open or any(m in self._batch_of for m in intent.members):
            return  # its batch is already tracked (adopted under this key)
        self._intents[key] = intent
        for m in intent.members:
            self._intent_of[m] = key

    async def _adopt(self, key: bytes, intent: BatchState) -> None:
        """Adopt the batch that ``intent`` led to, if the API has one; close the intent when
        no batch can be it (its members then join a new batch): not while it is younger than
        :attr:`adopt_grace_s` (its create may be under way, another worker's). Its members
        meanwhile wait, but those whose deadline would not allow a batch sent after the grace
        are answered in real time at once."""
        members = set(intent.members)
        known = {s.batch_id for s in self._open.values()}
        not_it = self._not_it.setdefault(key, set())
        running = False
        for b in await self._api.listed(intent.intent_ms - ADOPT_SKEW_MS):
            if b.batch_id in known or b.batch_id in not_it or b.size != len(members):
                continue
            if not b.ended:
                running = True  # its results will say: asked again next round
                continue
            if {r.custom_id async for r in self._api.results(b.batch_id)} == members:
                state = intent.submitted(b.batch_id, b.created_ms)
                await self._state.write(state)
                log(logger, "lane_intent_adopted", batch_id=b.batch_id, size=len(members))
                self._release(key, intent)
                for m in intent.members:
                    self._entries.pop(m, None)
                self._track(key, state)
                return
            not_it.add(b.batch_id)
        if running:
            return
        young_s = self.adopt_grace_s - (self._clock() - intent.intent_ms / 1000)
        if young_s > 0:
            late = too_late(
                (m for m in intent.members if m in self._entries),
                self._deadlines,
                now_s=self._clock(),
                expected_s=young_s + self.times.expected_s(),
                fallback_s=self.fallback_s,
            )
            self._real_time(late)
            return
        await self._state.close(key)
        self._closed.add(key)
        log(logger, "lane_intent_closed", size=len(members))
        self._release(key, intent)
        # Due at once: they waited for a batch already.
        since = intent.intent_ms / 1000 - self._assembly.max_age_s
        for m in intent.members:
            entry = self._entries.pop(m, None)
            if entry is not None:
                self._enqueue(intent.model, m, entry, since)

    def _release(self, key: bytes, intent: BatchState) -> None:
        del self._intents[key]
        self._not_it.pop(key, None)
        for m in intent.members:
            self._intent_of.pop(m, None)

    def _track(self, key: bytes, state: BatchState) -> None:
        """``state``'s batch is polled here. Its key is no intent any more: a state read
        between this worker's create and the write of its id (a rebalance's) took the intent
        for one to adopt, and would otherwise close it, tombstoning the live batch's record."""
        intent = self._intents.get(key)
        if intent is not None:
            self._release(key, intent)
        self._open[key] = state
        for m in state.members:
            self._batch_of[m] = key

    async def _collect(self, key: bytes, state: BatchState) -> None:
        results = {r.custom_id: r async for r in self._api.results(state.batch_id or "")}
        if state.submitted_ms is not None:
            took_s = self._clock() - state.submitted_ms / 1000
            self.times.observe(took_s)
            if self._metrics is not None:
                self._metrics.lane_batch_seconds.observe(took_s)
        for m in state.members:
            # A member the results do not name is treated as expired: answered in real time.
            results.setdefault(m, ItemResult(m, "expired"))
        self._settle(key, results)

    def _settle(self, key: bytes, results: dict[str, ItemResult]) -> None:
        """The batch ``key`` has ended with ``results``, one per member: each member's waiter
        is answered; the batch closes once none of them can come again (``_close_done``)."""
        self._results[key] = results
        for result in results.values():
            self._resolve(result)

    def _resolve(self, result: ItemResult) -> None:
        self._deadlines.pop(result.custom_id, None)
        waiter = self._waiters.get(result.custom_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)


def _timeout_s(api: BatchApi) -> float:
    """The timeout of ``api``'s client (``AnthropicBatches.timeout_s``), else
    :data:`CREATE_TIMEOUT_S`."""
    stated = getattr(api, "timeout_s", None)
    return stated if isinstance(stated, float) and stated > 0 else CREATE_TIMEOUT_S
