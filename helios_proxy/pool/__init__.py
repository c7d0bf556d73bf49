"""Backend connection pools: one per (node, database, user), FIFO waiters, health check on acquire."""
from .pool import Pool, PoolManager  # noqa: F401
