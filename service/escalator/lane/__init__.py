"""The batch lane: requests that can wait, answered through the Message Batches API at half
the price (issue 24).

What is here: each request's deadline, in use (every decision records the deadline in force
and the lane), and the rule that picks its lane (``deadlines.py``); the cheap tier's hand-off
(``handoff.py``: a request that can wait is answered at once by its copy on the hand-off
topic, committed once that is acknowledged); batch assembly per model up to the documented
limits or an age bound, with custom ids the API accepts (``assembly.py``); the per-batch state
record and what a restarted worker finds open (``state.py``, on Kafka ``state_topic.py``); the
Batches API boundary (``batches.py``); its rate limits (``limits.py``); and the batches in
flight (``runner.py``: intent, create, batch id, polling, results to the waiting records,
resume of the same batch, the processing queue counted under its limit). The
lane worker is a row of the tier table (``tiers/table.py``, handler ``tiers/lane.py``), run by
``build_service(settings, [..., "lane"])``; tests/integration/test_batch_lane.py runs it on
the real broker and the emulator.

Run by ``escalator run --tier lane`` (or ``--tier all`` with ``ESCALATOR_BATCH_LANE=on``,
``tiers/table.tiers_to_run``). An intent without a batch id is adopted (``runner.py``), and a
record whose deadline less ``ESCALATOR_BATCH_FALLBACK_S`` comes before its batch's result is
answered in real time (``tiers/lane.py``). Still missing: a stop waits the whole shutdown
grace for the records that wait for their batch; the lane's check of the cheap adapter goes
through the tracing wrapper's ``__getattr__`` (fine on Python 3.11, whose runtime protocol
check uses ``hasattr``; 3.12's uses ``getattr_static`` by its release notes, so there it
would be refused with tracing on: untested).

Measurement (ESCALATOR_MEASURE_LANE=batch, the default with the lane on): the shadows the
cheap tier draws are handed off too (``handoff.py``) and answered by the strong model in
batches (``tiers/lane.py``); the cheap decision says so (``shadow_lane``), and calibration
treats one not answered yet as pending (``calibration/dataset.py``).

The plan for the worker (the next step; docs/OPERATIONS.md, "The batch lane"):

1. Hand-off. The cheap handler makes one call into this package near the top of ``handle``
   (``takes(request, record)``: outputs, or None to go on in real time). When the rule says
   batch, its output is the request on a hand-off topic, with its absolute deadline
   (the record's timestamp + ``deadline_s``; the engine's ``Record`` does not expose the
   timestamp yet), and the engine commits the input offset once that is acknowledged: no
   consumer holds a requests partition for hours.
2. The lane is a row of the tier table reading the hand-off topic through the engine. Its
   handler puts each record in the :class:`~escalator.lane.assembly.Assembly` and returns
   when the record's batch is submitted and recorded; its output is the state record, so the
   hand-off offset commits only after the batch id is durable.
3. State: a compacted topic keyed by batch, holding the batch id, model, submission time and
   the members as hand-off places (``p<partition>o<offset>``), not texts (a batch may be
   256 MB; a Kafka record is 1 MB by default): the hand-off topic's retention must outlast
   24 hours plus the fallback. A tombstone closes the batch once it has ended and the lane
   group has committed every member's hand-off offset (``runner.py``).
4. The window between create and the state record: the API takes no idempotency key. Write
   an intent record (members, time) before create; a worker that finds an intent without a
   batch id lists the batches created since, and adopts the one whose results name exactly
   the intent's custom ids (waiting for it to end), resubmitting only when none was created.
   That keeps "never paid twice" across a kill at any point.
5. Polling: on assignment, read the state topic to its end and poll every open batch (the
   same batch, never a new one); results route as real-time answers do (confident to results,
   unsure to escalations, or, while the deadline still meets the rule, to a strong-model
   batch: ``handoff.py``, ``tiers/lane.py``), with the same contract, metrics and decisions
   (``lane: batch``).
   ``errored`` follows the real-time failure policy; ``expired``, ``canceled``, and members
   whose deadline less ``ESCALATOR_BATCH_FALLBACK_S`` passes while their batch runs go to the
   real-time path (and the batch is canceled when none of it is still useful).
6. The lane worker feeds :class:`~escalator.lane.deadlines.CompletionTimes` (submission to
   end per batch) so the rule follows the lane's observed speed.
"""
