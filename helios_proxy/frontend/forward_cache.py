"""The query cache's steps of the client-to-server direction (cache/):
a miss's Fill started when its message goes out, and the extended protocol's batches looked up
whole (Parse/Bind/[Describe]/Execute/Sync, or a prepared statement's Bind/...), a hit consumed
and answered without a server. (The simple protocol's hits: the cache stage and QueryCache.quick.)
Asked by the Forwarder where the cache is on.
"""
from ..cache import Fill, extended
from ..protocol import codec, messages as m

PARSE_COMPLETE, BIND_COMPLETE = codec.message(m.PARSE_COMPLETE), codec.message(m.BIND_COMPLETE)


class CacheSteps:
    """On the Forwarder's buffer and runs (fwd.data, fwd.buf, fwd.cut(), fwd.answer()); `next` is
    the Fill of the message at hand (a miss) or a Parse's Admission, from the cache stage's decision."""
    __slots__ = ("fwd", "next")

    def __init__(self, forwarder):
        self.fwd = forwarder
        self.next = None

    def start_fill(self):
        """The message at hand goes to the server now: a miss's answer is collected on its way back
        (relay.py), if nothing else is owed before it (its answer comes first)."""
        fill, self.next = self.next, None
        session = self.fwd.session
        state = session.cache_state
        if (fill.__class__ is Fill and state is not None and state.fill is None and not session.plan.owes()
                and session.slot.lease.target == "primary"):  # (a standby may lag behind a write)
            state.fill = fill

    def cache_parse(self, begin, end, replacement):
        """A Parse: a cacheable text under a name is remembered for its Binds; an unnamed one
        followed by its whole batch is looked up (True: a hit, answered)."""
        decided, self.next = self.next, None
        name, sql, types = extended.parse_types(self.fwd.data, begin, end)
        state = self.fwd.session.cache_state
        if state is None:
            return False
        named = state.named
        if name:
            if decided is not None:
                named[name] = (sql, types)
            elif named:
                named.pop(name, None)
            return False
        if decided is None or replacement is not None:
            return False
        adm, shape_values = decided
        return self.cache_batch(adm, shape_values, types, sql, begin, end, True)

    def cache_bind(self, begin):
        """A Bind of a statement remembered by cache_parse, its whole batch here: looked up."""
        session = self.fwd.session
        data = self.fwd.data
        found = session.cache_state.named.get(codec.read_cstr(data, data.index(0, begin + 5) + 1)[0])
        if found is None:
            return False
        sql, types = found
        cache = session.proxy.cache
        shape, shape_values = cache.shapes.get(sql)
        adm = cache.admit(session, shape, sql) if shape.why_not is None else None
        return adm is not None and self.cache_batch(adm, shape_values, types, sql, begin, begin, False)

    def quick_batch(self, cache, begin, end):
        """An unnamed Parse of a text that hit before, its whole batch here: answered from the hot
        tier before the pipeline runs (True), or left to the usual path."""
        name, sql, types = extended.parse_types(self.fwd.data, begin, end)
        found = None if name else cache.known_now(self.fwd.session, sql)
        if found is None:
            return False
        adm, shape_values = found
        key, describe, sync_end = self.batch_key(cache, adm, shape_values, types, end)
        entry = key is not None and cache.hot_hit(adm, key)
        if not entry or (describe and entry.rlen < 0):
            cache.forget(self.fwd.session, sql)
            return False
        self.cache_answer(entry, begin, sync_end, True, describe, sql)
        return True

    def batch_key(self, cache, adm, shape_values, types, after):
        """(cache key, Describe asked?, end of Sync) of the plain batch whose Bind is at data[after];
        (None, ...) when it is not one, or lacks a parameter."""
        found = extended.batch(self.fwd.data, after)
        if found is None:
            return None, False, 0
        bind_begin, bind_end, describe, sync_end = found
        _, params, results = extended.bind_values(self.fwd.data, bind_begin, bind_end)
        values = extended.values(shape_values, params, types)
        if values is None:
            return None, False, 0
        return cache.key(self.fwd.session, adm, values, results), describe, sync_end

    def cache_answer(self, entry, begin, sync_end, parse, describe, sql):
        """A whole batch data[begin:sync_end] answered from entry; the batch is consumed."""
        self.fwd.cut(begin, sync_end)
        self.fwd.buf.pos = sync_end
        head = (PARSE_COMPLETE if parse else b"") + BIND_COMPLETE
        admission = self.fwd.session.proxy.admission
        if admission.on:  # a hit is an execution too (limits/admission.py)
            refused = admission.take(self.fwd.session, 1, sql)
            if refused is not None:
                self.fwd.answer(head + codec.error_response(*refused))
                return
        self.fwd.answer(head + (entry.rowdesc if describe else b"") + entry.body)

    def cache_batch(self, adm, shape_values, types, sql, begin, after, parse):
        """Look the batch beginning at data[begin] up (its Bind at `after`): a hit answers it all and
        consumes it (True); a miss leaves its Fill to start when its first message goes out."""
        session = self.fwd.session
        cache = session.proxy.cache
        key, describe, sync_end = self.batch_key(cache, adm, shape_values, types, after)
        if key is None:
            return False
        entry, fill = cache.lookup(session, adm, key, hash(sql))
        if entry is None or (describe and entry.rlen < 0):
            if fill is not None and session.slot.lease is None:
                route = session.route
                store, route.next_target = cache.fill_target(adm, route.next_target)
                self.next = fill if store else None
            elif fill is not None:
                self.next = fill
            return False
        if parse:
            cache.remember(session, sql, adm, shape_values)  # (asked again: the quick path next time)
        self.cache_answer(entry, begin, sync_end, parse, describe, sql)
        return True
