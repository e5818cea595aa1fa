"""Publish code: the Delta commit (``delta``), the Redis versioned load and pointer flip (``redis``,
``redis_load``). Used by ``jobs.publish``; never imports ``jobs``."""
