"""What a plugin sees of the proxy's state: read-only views, so that no plugin writes the session
(its own state lives in its own objects, keyed by `session.id` if it needs one per client).

`SessionInfo`: id, user, database, peer (address, port), tls, local (Unix socket), mode (pool mode),
tenant (its name, or None), application_name, backend_pid, in_transaction.
`QueryInfo` (the `ctx` of on_query_start / on_query_complete): sql, protocol, tags (a dict the
plugin may annotate: the one place it writes), session (a SessionInfo).
Setting an attribute on either raises AttributeError (counted as the plugin's failure)."""


class ReadOnly:
    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only ({name}): keep a plugin's state in its own "
                             "objects, keyed by session.id")


class SessionInfo(ReadOnly):
    __slots__ = ("_s",)

    def __init__(self, session):
        object.__setattr__(self, "_s", session)

    id = property(lambda self: self._s.identity.id)
    user = property(lambda self: self._s.identity.user)
    database = property(lambda self: self._s.identity.database)
    peer = property(lambda self: self._s.identity.peer)
    tls = property(lambda self: self._s.identity.tls)
    local = property(lambda self: self._s.identity.local)
    mode = property(lambda self: self._s.identity.mode)
    backend_pid = property(lambda self: self._s.identity.backend_pid)
    tenant = property(lambda self: self._s.identity.tenant.name if self._s.identity.tenant is not None else None)
    application_name = property(lambda self: getattr(self._s, "settings", None) and
                                self._s.settings.values.get("application_name"))
    in_transaction = property(lambda self: getattr(self._s, "plan", None) is not None and self._s.plan.status != b"I")

    def __repr__(self):
        return f"<SessionInfo {self.id} user={self.user} db={self.database}>"


class QueryInfo(ReadOnly):
    __slots__ = ("_ctx", "session")

    def __init__(self, ctx):
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "session", SessionInfo(ctx.session))

    sql = property(lambda self: self._ctx.sql)
    protocol = property(lambda self: self._ctx.protocol)
    tags = property(lambda self: self._ctx.tags)

    def __repr__(self):
        return f"<QueryInfo {self.sql[:60]!r}>"
