"""The consumer engine.

Poll, dispatch, back-pressure, rebalances and drain, and the delivery strategies that own
outputs and offsets.
"""
