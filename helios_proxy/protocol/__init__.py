"""Sans-I/O PostgreSQL v3 protocol codec: framing, startup packets, message builders, SCRAM/MD5."""
