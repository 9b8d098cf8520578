"""The wire contract.

Request, result, escalation, decision and dead-letter messages, and their JSON Schemas.
"""
