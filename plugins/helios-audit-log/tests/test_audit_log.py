import json
from types import SimpleNamespace

from helios_audit_log import AuditLog
from helios_proxy.plugins.actions import Outcome


def test_writes_one_json_line_per_query(tmp_path):
    audit = AuditLog()
    audit.configure({"path": str(tmp_path / "a.jsonl"), "max_sql": 10})
    session = SimpleNamespace(user="alice", database="app", peer=("127.0.0.1", 5000), id=7)
    ctx = SimpleNamespace(session=session, sql="select 1234567890123", protocol="simple", tags={"x": "y"})
    audit.on_query_complete(ctx, Outcome(0.25, "SELECT 1", 1, None, "primary"))
    audit.on_shutdown(None)
    row = json.loads((tmp_path / "a.jsonl").read_text())
    assert row["user"] == "alice" and row["sql"] == "select 123" and row["rows"] == 1 and row["node"] == "primary"
    assert row["tags"] == {"x": "y"} and row["error"] is None


def test_without_a_path_it_writes_nothing(tmp_path):
    audit = AuditLog()
    audit.configure({})
    assert audit.file is None
