"""One server connection to a PostgreSQL node: connect, TLS, authenticate, run the proxy's own queries."""
