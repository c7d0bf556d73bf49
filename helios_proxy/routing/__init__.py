"""Read/write splitting: classification (classify.py), SQL hints (hints.py), node choice (balancer.py)."""
