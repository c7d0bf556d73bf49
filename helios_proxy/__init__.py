"""HeliosProxy: a PostgreSQL wire-protocol proxy (pooling, routing, failover, plugins)."""

__version__ = "0.1.0"
