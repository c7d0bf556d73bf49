"""A cache miss on its way to the server (cache/): the response path (frontend/relay.py) hands
it the answer's messages as the client gets them; it stores the answer once it completed cleanly."""
import time

from ..protocol import messages as m

PARSE_COMPLETE, BIND_COMPLETE = m.PARSE_COMPLETE[0], m.BIND_COMPLETE[0]
ROW_DESCRIPTION, DATA_ROW, COMMAND_COMPLETE, READY = (m.ROW_DESCRIPTION[0], m.DATA_ROW[0], m.COMMAND_COMPLETE[0],
                                                      m.READY_FOR_QUERY[0])


class Fill:
    """A miss on its way to the server: collects its answer (response path) and stores it."""
    __slots__ = ("cache", "key", "adm", "session", "gens", "warm_gens", "started", "rowdesc", "parts", "size",
                 "complete", "origin", "database")

    def __init__(self, cache, key, adm, session, warm_gens, origin):
        self.cache, self.key, self.adm, self.session = cache, key, adm, session
        self.database = session.identity.database
        self.gens = cache.generations(session.identity.database, adm.sorted_names)
        self.warm_gens = warm_gens
        self.started = time.monotonic()
        self.rowdesc, self.parts, self.size, self.complete, self.origin = None, [], 0, False, origin

    def take(self, mtype, message, status=None):
        """One message of the answer as the client gets it; True when the fill is over (stored or not)."""
        if mtype == DATA_ROW or mtype == COMMAND_COMPLETE:
            if self.complete:
                return True
            self.parts.append(bytes(message))
            self.size += len(message)
            if self.size > self.cache.config.max_entry_bytes:
                self.cache.count("too_large")
                return True
            self.complete = mtype == COMMAND_COMPLETE
            return False
        if mtype == ROW_DESCRIPTION and self.rowdesc is None and not self.parts:
            self.rowdesc = bytes(message)
            return False
        if mtype == PARSE_COMPLETE or mtype == BIND_COMPLETE:
            return False
        if mtype == READY and self.complete and (status == b"I" or status == b"T"):
            self.cache.store(self)  # (in a transaction: one that has not written, admit() made sure)
        return True  # anything else (an error, a notice, NoData...): not stored
