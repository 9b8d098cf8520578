"""Development tools, not in the runtime wheel.

The Messages-API emulator, a local Kafka from Maven artifacts, datasets and the demo.
"""
