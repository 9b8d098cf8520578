"""Tier 0: a local classifier trained on the service's own answers, certified before it answers."""
