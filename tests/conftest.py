"""Test fixtures: a real PostgreSQL cluster (fix_cluster) and real `helios-proxy run` processes (fix_proxy)."""
pytest_plugins = ["tests.fix_cluster", "tests.fix_proxy", "tests.fix_ha"]
