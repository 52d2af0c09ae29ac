"""The arq worker: runs each turn against the upstream model and publishes its events to Redis."""
