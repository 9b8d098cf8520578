"""The emulator of the Messages API.

Documented per-model facts (models), validation rules (rules), the HTTP server (server).
"""
