"""The query cache's part of one client session: made by the cache (QueryCache.session_state) for
each session while the cache is on, written by cache/ and by the two directions' cache steps
(frontend/forward_cache.py starts a miss's fill, frontend/relay.py completes it). The session holds it
as `session.cache_state` (None: the cache was off when the session began)."""


class CacheState:
    __slots__ = ("fill", "pending", "off", "settings_stale", "tx_unsafe", "startup", "named")

    def __init__(self):
        self.fill = None             # the miss whose answer is on its way (stored by the response path)
        self.pending = None          # names written in the open transaction (invalidated again at its end)
        self.off = None              # why this session is never served from the cache (a temporary table)
        self.settings_stale = False  # session pooling: it changed settings; read them back first
        self.tx_unsafe = False       # SET LOCAL, an isolation level... in the open transaction
        self.startup = None          # session pooling: its startup settings, kept when it changes others
        self.named = {}              # prepared statement name -> (text, parameter types) of cacheable reads
