"""Kafka clients.

Consumers, producers (and their repair), admin, group-less reads; TLS and SASL settings applied
once.
"""
