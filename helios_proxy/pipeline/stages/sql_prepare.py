"""SQL-level PREPARE / EXECUTE / DEALLOCATE under transaction and statement pooling, without pinning.

A client's PREPARE p1 becomes PREPARE helios_sql_<hash> on the server (the hash of its parameter
types and query, so clients share it); EXECUTE p1(...) is rewritten to that name, and the session
prepares it first on a server connection that lacks it (frontend/forward.py). DEALLOCATE of the
client's statements, SQL-level or protocol-level, is answered by the proxy. PREPARE of a statement
the pool already parsed successfully is answered without a server.
"""
import hashlib
import re

from cachetools import LRUCache
from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream
from pglast.visitors import Visitor

from ...errors import ProxyError
from ...pool.prepared import Statement
from ...protocol import codec
from ..sqltext import Leading, head_word
from ..stage import StageResult
from .pooled import PooledSqlStage

LEADING = Leading("prepare", "execute", "deallocate")
NESTED = Leading("explain", "create")  # EXPLAIN EXECUTE p, CREATE TABLE t AS EXECUTE p
EXECUTE = re.compile(r"\bexecute\b", re.I)
PREPARE_DONE = codec.message(b"C", b"PREPARE\0")


class Plan:
    """What one query text does with SQL-level statements (cached by text)."""
    __slots__ = ("prepare", "executes", "deallocate", "pin")

    def __init__(self):
        self.prepare = None     # (client name, server name, server PREPARE text) for a lone PREPARE
        self.executes = ()      # client names the query EXECUTEs
        self.deallocate = None  # a lone DEALLOCATE: the name, or True for ALL
        self.pin = None


class _Executes(Visitor):
    def __init__(self, rename=None):
        super().__init__()
        self.names, self.rename = [], rename

    def visit_ExecuteStmt(self, parent, node):
        self.names.append(node.name)
        if self.rename:
            return ast.ExecuteStmt(name=self.rename[node.name], params=node.params)
        return None


def analyze(sql):
    plan = Plan()
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return plan
    lone = len(stmts) == 1
    for raw in stmts:
        s = raw.stmt
        if isinstance(s, ast.PrepareStmt):
            if not lone:
                plan.pin = "PREPARE inside a multi-statement query"
                continue
            body = RawStream()(ast.PrepareStmt(name="x", argtypes=s.argtypes, query=s.query))
            sname = "helios_sql_" + hashlib.blake2b(body.encode(), digest_size=12).hexdigest()
            text = RawStream()(ast.PrepareStmt(name=sname, argtypes=s.argtypes, query=s.query))
            plan.prepare = (s.name, sname, text)
        elif isinstance(s, ast.DeallocateStmt):
            if lone:
                plan.deallocate = True if s.isall else s.name
            else:
                plan.pin = "DEALLOCATE inside a multi-statement query"
    finder = _Executes()
    for raw in stmts:
        finder(raw)
    plan.executes = tuple(finder.names)
    return plan


def rename_executes(sql, mapping):
    stmts = parse_sql(sql)
    renamer = _Executes(mapping)
    for raw in stmts:
        renamer(raw)
    return RawStream()(stmts)


class SqlPreparedStatements(PooledSqlStage):
    name = "sql_prepare"
    leaves_reads_alone = True
    analyze = staticmethod(analyze)

    def __init__(self, config):
        super().__init__(config)
        self.rewrites = LRUCache(maxsize=4096)

    @staticmethod
    def screen(ctx):
        sql, word = ctx.sql, ctx.word
        return LEADING.search(sql, word) or ("execute" in ctx.lower and NESTED.search(sql, word)
                                             and EXECUTE.search(sql))

    def act_large(self, ctx):
        if head_word(ctx.sql) in ("prepare", "execute", "deallocate", "explain", "create"):
            ctx.decide().pin = "a PREPARE or EXECUTE too large to analyze (pipeline.max_parse_bytes)"
        return StageResult.CONTINUE

    def act(self, ctx, plan):
        if plan.pin:
            ctx.decide().pin = plan.pin
            return StageResult.CONTINUE
        try:
            if plan.deallocate is not None:
                return self.deallocate(ctx, plan.deallocate)
            if plan.prepare:
                return self.prepare(ctx, *plan.prepare)
            if plan.executes:
                return self.execute(ctx, plan.executes)
        except ProxyError as e:
            return StageResult.reject(e.sqlstate, e.message)
        return StageResult.CONTINUE

    def prepare(self, ctx, name, sname, text):
        session = ctx.session
        if ctx.protocol != "simple":
            ctx.decide().pin = "PREPARE through the extended protocol"
            return StageResult.CONTINUE
        stmt = session.statements.add_sql(name, Statement(sname, text))
        if sname in session.slot.pool.known_statements:
            return StageResult.respond(PREPARE_DONE)
        ctx.decide().sql_prepare = (name, stmt)
        return StageResult.rewrite(text)

    def execute(self, ctx, names):
        statements = ctx.session.statements
        stmts = [statements.lookup_sql(n) for n in names]
        mapping = {n: s.server_name for n, s in zip(names, stmts)}
        key = (ctx.sql, tuple(sorted(mapping.items())))
        sql = self.rewrites.get(key)
        if sql is None:
            sql = self.rewrites[key] = rename_executes(ctx.sql, mapping)
        decided = ctx.decide()
        decided.sql_needs = stmts
        if any(s.sets for s in stmts):
            decided.settings_changed = True
        return StageResult.rewrite(sql)

    def deallocate(self, ctx, name):
        statements = ctx.session.statements
        if name is True:
            statements.clear()
            return StageResult.respond(codec.message(b"C", b"DEALLOCATE ALL\0"))
        statements.deallocate(name)  # raises 26000 for an unknown name
        return StageResult.respond(codec.message(b"C", b"DEALLOCATE\0"))
