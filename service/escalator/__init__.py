"""Escalator: classify with the cheapest Claude model that does the job; escalate when unsure."""

__version__ = "0.1.0"
