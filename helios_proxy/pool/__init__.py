"""Backend connection pools: one per (node, database, user), FIFO waiters, health check on acquire."""
