"""A session's continuity across server connections: what it sent since its server was last idle
(journal.py), re-running that on a new primary when its server is lost (replay.py), and moving its
session state from one connection to another (session_migrate.py: a planned switchover, a replay).
It belongs to the session, not to the topology: the topology only says where the new server is."""
