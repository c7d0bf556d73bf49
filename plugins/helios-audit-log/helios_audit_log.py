"""HeliosProxy plugin: one JSON line per query: when, who (user, client address), what (the SQL, up to
`max_sql` characters), where (database, node), how long, how many rows, which error, plugin tags.

    [plugins.audit_log]
    path = "/var/log/helios/audit.jsonl"   # required: without it the plugin writes nothing
    max_sql = 2000
"""
import json
import logging
import time

from helios_proxy.plugins.hookspecs import hookimpl

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self):
        self.path, self.max_sql, self.file = None, 2000, None

    def configure(self, table):
        self.path = table.get("path")
        self.max_sql = int(table.get("max_sql", 2000))
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.path:
            self.file = open(self.path, "a", buffering=1, encoding="utf-8")  # line-buffered
        else:
            log.warning("audit_log: no [plugins.audit_log] path set; writing nothing")

    def record(self, ctx, outcome):
        session = ctx.session
        return {"at": round(time.time(), 6), "user": session.user, "database": session.database,
                "client": session.peer[0], "session": session.id, "sql": ctx.sql[:self.max_sql],
                "protocol": ctx.protocol, "node": outcome.node, "seconds": round(outcome.seconds, 6),
                "rows": outcome.rows, "command": outcome.command_tag, "error": outcome.error,
                "tags": ctx.tags or None}

    @hookimpl
    def on_query_complete(self, ctx, outcome):
        if self.file is not None:
            self.file.write(json.dumps(self.record(ctx, outcome)) + "\n")

    @hookimpl
    def on_shutdown(self, proxy):
        if self.file is not None:
            self.file.close()
            self.file = None


plugin = AuditLog()
