"""Per database, what the cache must know of its catalog (loaded through the primary, refreshed
after DDL through the proxy and every `catalog_refresh_s`):

- relations by name (every schema but the system ones and temporary ones): a query reading a name
  the catalog does not know (a system catalog, a temporary table, a table created a moment ago) is
  not cached.
- `deps(name)`: the names whose writes must invalidate a read of `name`: itself, its inheritance
  or partition family (a write to a partition changes its parent's rows), and for a view the tables
  under it, recursively. A name is a bare relation name: a write to s1.t invalidates reads of s2.t
  too (more than needed, never less, whatever the search_path).
- `reach(names)`: what else a write to names changes: tables whose foreign keys cascade from them
  (ON DELETE/UPDATE CASCADE, SET NULL, SET DEFAULT), a view's tables, and anything at all when a
  user trigger or a rule (other than a view's SELECT) is on one of them.
- each function name's volatility (the most volatile of its overloads, in any schema): only
  immutable ones are cached; stable ones (now()) with a TTL; volatile ones never.
"""
import time

RELATIONS = """
SELECT c.relname, c.relkind,
  ARRAY(SELECT p.relname FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
        WHERE i.inhrelid = c.oid)::text,
  ARRAY(SELECT DISTINCT d2.relname FROM pg_catalog.pg_rewrite r
        JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
             AND d.refclassid = 'pg_catalog.pg_class'::regclass
        JOIN pg_catalog.pg_class d2 ON d2.oid = d.refobjid
        WHERE r.ev_class = c.oid AND d2.oid <> c.oid)::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'
"""
# What else a write to a relation changes: its user triggers and non-SELECT rules may write anything
# (true), its referencing tables with ON DELETE/UPDATE CASCADE, SET NULL or SET DEFAULT change with it.
REACHES = """
SELECT c.relname,
  EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.ev_class = c.oid AND r.ev_type <> '1'),
  ARRAY(SELECT k.relname FROM pg_catalog.pg_constraint f JOIN pg_catalog.pg_class k ON k.oid = f.conrelid
        WHERE f.contype = 'f' AND f.confrelid = c.oid
          AND (f.confdeltype IN ('c', 'n', 'd') OR f.confupdtype IN ('c', 'n', 'd')))::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'f') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'
  AND (EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.ev_class = c.oid AND r.ev_type <> '1')
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f WHERE f.contype = 'f' AND f.confrelid = c.oid
                    AND (f.confdeltype IN ('c', 'n', 'd') OR f.confupdtype IN ('c', 'n', 'd'))))
"""
# Per function name, the most volatile of its overloads: 'i'mmutable < 's'table < 'v'olatile.
VOLATILITY = "SELECT proname, max(provolatile::text) FROM pg_catalog.pg_proc GROUP BY proname"
SYSTEM_SCHEMAS = frozenset(("pg_catalog", "information_schema"))


def _names(array_text):
    inner = array_text.strip("{}")
    return [n.strip('"') for n in inner.split(",")] if inner else []


class Catalog:
    """One database's relations and immutable functions."""

    def __init__(self, rows=(), volatility=(), isolation="read committed", reaches=()):
        self.kinds = {}      # relation name -> set of relkinds under that name
        self.family = {}     # relation name -> names of its inheritance/partition family
        self.views = {}      # view name -> names it reads
        parent = {}
        for name, kind, parents, view_deps in rows:
            self.kinds.setdefault(name, set()).add(kind)
            for p in _names(parents):
                parent.setdefault(name, set()).add(p)
                parent.setdefault(p, set()).add(name)
            if kind in ("v", "m"):
                self.views.setdefault(name, set()).update(_names(view_deps))
        for name in parent:  # connected families (parent and children, either way)
            if name in self.family:
                continue
            group, todo = set(), [name]
            while todo:
                n = todo.pop()
                if n not in group:
                    group.add(n)
                    todo.extend(parent.get(n, ()))
            frozen = frozenset(group)
            for n in group:
                self.family[n] = frozen
        self.anything = set()  # relations a write to which may change any table (triggers, rules)
        self.cascades = {}     # relation name -> names changed with it (foreign-key actions)
        for name, anything, children in reaches:
            if anything in (True, "t", "true"):
                self.anything.add(name)
            if _names(children):
                self.cascades.setdefault(name, set()).update(_names(children))
        self.volatility = dict(volatility)
        self.isolation = isolation  # default_transaction_isolation for the pool's user in this database
        self.loaded = time.monotonic()
        self.stale = False   # DDL went through the proxy: load it again before the next use

    def why_not(self, reads):
        """None if every relation read is a known table, view or materialized view; else why not."""
        for schema, name in reads:
            if schema in SYSTEM_SCHEMAS or (schema or "").startswith("pg_") or name.startswith("pg_"):
                return "system catalog"
            kinds = self.kinds.get(name)
            if kinds is None:
                return f"unknown relation {name}"
            if "f" in kinds:
                return "foreign table"
        return None

    def reach(self, names):
        """Every name a write to names may change (foreign-key actions, through views to their
        tables, transitively), or None: anything (a trigger or a rule runs code of its own)."""
        out, todo = set(), list(names)
        while todo:
            name = todo.pop()
            if name in out:
                continue
            if name in self.anything:
                return None
            out.add(name)
            todo.extend(self.cascades.get(name, ()))
            todo.extend(self.views.get(name, ()))  # (an updatable view writes its tables)
        return out

    def deps(self, reads):
        """Every name whose write invalidates these reads."""
        out, todo = set(), [name for _, name in reads]
        while todo:
            name = todo.pop()
            if name in out:
                continue
            out.add(name)
            todo.extend(self.family.get(name, ()))
            todo.extend(self.views.get(name, ()))
        return out


def load(conn):
    return Catalog(conn.execute(RELATIONS), conn.execute(VOLATILITY),
                   conn.execute("SELECT pg_catalog.current_setting('default_transaction_isolation')")[0][0],
                   conn.execute(REACHES) or ())


def on_server(session, fn):
    """fn(server connection) for the proxy's own query on the session's behalf: on its own server
    (session pooling: the pump stops meanwhile), else on one from its pool."""
    lease = session.slot.lease
    if lease is not None:
        with lease.borrow() as server:
            return fn(server)
    pool = session.slot.pool
    conn, ok = pool.acquire(), False
    try:
        result = fn(conn)
        ok = True
        return result
    finally:
        pool.release(conn, reusable=ok)

