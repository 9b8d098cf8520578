"""The batch lane: requests that can wait, answered through the Message Batches API at half
the price (issue 24).

What is here: each request's deadline and the rule that picks its lane (``deadlines.py``).
The lane worker (hand-off topic, batch assembly, the state topic, polling) is not built yet,
so ``ESCALATOR_BATCH_LANE=on`` is refused at start-up and every request is answered in real
time; decisions record the lane and the deadline in force already.
"""
