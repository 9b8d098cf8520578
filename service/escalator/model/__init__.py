"""The model boundary.

The Claude client, the one retry and failure policy, breaker, concurrency and admission limits,
task, prices, per-model request profiles.
"""
