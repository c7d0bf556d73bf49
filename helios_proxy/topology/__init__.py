"""The cluster as the proxy sees it: node health (health.py); primary tracking and failover come next."""
