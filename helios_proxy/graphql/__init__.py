"""The GraphQL gateway (`[graphql] enabled`, the spec's "GraphQL-to-SQL translation with DataLoader
batching"), served at `/graphql` on the admin listener (GraphiQL on GET).

A request runs as a PostgreSQL role: the user a `Authorization: Bearer` token names (a JWT or an
API key of the auth proxy), else `anonymous_role`. The gateway logs in as `[graphql] user` and
runs every request in one transaction of its own with `SET LOCAL ROLE`, so PostgreSQL's
privileges and row-level security decide what it sees; the schema is built from what that role
may read (schema.py, catalog.py), per role, and built again after DDL through the proxy or
`schema_ttl_s`. With tenancy, a token naming a tenant (its tenant_claim, or a user.tenant name)
runs with that tenant's settings (helios.tenant for row-level security, search_path). Each
level of a nested query is one SQL statement for all its parents. Limits:
`max_depth` (refused before anything runs), `max_rows` per field, `statement_timeout_ms`. Errors
are GraphQL errors with the SQLSTATE in `extensions`, never a traceback.
"""
import json
import logging
import time

import gevent
from graphql import GraphQLError, default_field_resolver, execute_sync, parse, validate
from graphql.language import FieldNode, FragmentSpreadNode, InlineFragmentNode, OperationDefinitionNode

from ..backend import statements
from ..backend.connection import ServerConnection
from ..backend.credentials import Credentials
from ..errors import ProxyError
from ..tenancy.proof import PROOF_SETTING
from . import catalog, query
from .schema import build, needed, rows_of, siblings

log = logging.getLogger(__name__)
APPLICATION_NAME = "helios-graphql"


class Refused(Exception):
    def __init__(self, message, status=400, code=None):
        super().__init__(message)
        self.status, self.code = status, code


def depth(document, limit):
    """The deepest field nesting of the document's operations (fragments followed, introspection
    fields not counted), stopping past limit."""
    fragments = {d.name.value: d for d in document.definitions if d.kind == "fragment_definition"}

    def walk(selection_set, level, seen):
        if selection_set is None or level > limit:
            return level
        deepest = level
        for sel in selection_set.selections:
            if isinstance(sel, FieldNode):
                if sel.name.value.startswith("__"):  # (introspection: the schema's own shape, not data)
                    continue
                deepest = max(deepest, walk(sel.selection_set, level + 1, seen) if sel.selection_set else level + 1)
            elif isinstance(sel, InlineFragmentNode):
                deepest = max(deepest, walk(sel.selection_set, level, seen))
            elif isinstance(sel, FragmentSpreadNode) and sel.name.value not in seen:
                fragment = fragments.get(sel.name.value)
                if fragment is not None:
                    deepest = max(deepest, walk(fragment.selection_set, level, seen | {sel.name.value}))
        return deepest
    return max((walk(d.selection_set, 0, frozenset()) for d in document.definitions
                if isinstance(d, OperationDefinitionNode)), default=0)


INTROSPECTION_COST = 100  # __schema / __type: the whole schema's shape comes back


def cost(document, limit):
    """What a request costs (graphql.max_cost): its fields as they will run, each alias and each
    use of a fragment counted again, an introspection root INTROSPECTION_COST; stops past limit
    (so that fragments spread into fragments cannot make counting itself expensive)."""
    fragments = {d.name.value: d for d in document.definitions if d.kind == "fragment_definition"}
    total = 0

    def walk(selection_set, seen):
        nonlocal total
        for sel in selection_set.selections:
            if total > limit:
                return
            if isinstance(sel, FieldNode):
                total += INTROSPECTION_COST if sel.name.value in ("__schema", "__type") else 1
                if sel.selection_set is not None:
                    walk(sel.selection_set, seen)
            elif isinstance(sel, InlineFragmentNode):
                walk(sel.selection_set, seen)
            elif isinstance(sel, FragmentSpreadNode) and sel.name.value not in seen:
                fragment = fragments.get(sel.name.value)
                if fragment is not None:
                    walk(fragment.selection_set, seen | {sel.name.value})
    for d in document.definitions:
        if isinstance(d, OperationDefinitionNode):
            walk(d.selection_set, frozenset())
    return total


YIELD_EVERY = 256  # fields resolved between two turns of the proxy's loop


def yielding_resolver():
    """graphql-core's default field resolver, letting the proxy's other clients run every
    YIELD_EVERY fields: a large answer is built in slices, never holding the loop for long."""
    count = 0

    def resolve(source, info, **args):
        nonlocal count
        count += 1
        if count % YIELD_EVERY == 0:
            gevent.sleep(0)
        return default_field_resolver(source, info, **args)
    return resolve


class Request:
    """One request's transaction: run(sql, params) and the levels loaded so far."""

    def __init__(self, conn, max_rows):
        self.conn, self.max_rows, self.levels, self.statements = conn, max_rows, {}, 0

    def run(self, sql, params=()):
        self.statements += 1
        try:
            return self.conn.fetch(sql, params)[1]
        except ProxyError as e:
            raise GraphQLError(e.message, extensions={"sqlstate": e.sqlstate}) from None

    def level(self, info, table, key_column, row, row_column, args, max_rows):
        """{key: [rows]} of the level this field loads, for every row of the parent's level at once."""
        parent_level = row.get("__level__") or [row]
        key = (id(parent_level), info.path.key if isinstance(info.path.key, str) else info.field_name,
               repr(sorted(args.items())))
        found = self.levels.get(key)
        if found is None:
            keys = {str(r.get(row_column)) for r in parent_level if r.get(row_column) is not None}
            columns = needed(table, info)
            raw = query.level(lambda sql, params: self.run(sql, params), table, columns, key_column, keys,
                              args, max_rows) if keys else {}
            found, everyone = {}, []
            for k, records in raw.items():
                rows = rows_of(table, [[r[c] for c in columns] for r in records], columns)
                found[k] = rows
                everyone += rows
            siblings(everyone)
            self.levels[key] = found
        return found


class Gateway:
    def __init__(self, proxy):
        self.proxy = proxy
        self.schemas = {}  # (role, tenant) -> (built at, DDL generation, schema)
        self.requests = self.errors = 0

    @property
    def cfg(self):
        return self.proxy.config.graphql

    def role_of(self, authorization):
        """(role, tenant or None) a request runs as: a bearer token's user (and tenant: its
        tenant_claim, or the user name's suffix with identify = user_suffix), or anonymous_role."""
        if not authorization or not authorization.strip():  # no header: the anonymous role, if any
            if not self.cfg.anonymous_role:
                raise Refused("authentication required (Authorization: Bearer <JWT or API key>)", 401)
            return self.cfg.anonymous_role, None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():  # a header that says nothing valid: never anonymous
            raise Refused("malformed Authorization header (Authorization: Bearer <JWT or API key>)", 401)
        token = token.strip()
        user, claims = self._bearer(token)
        tenants = self.proxy.tenants
        if tenants is None:
            return user, None
        name = (claims or {}).get(tenants.cfg.tenant_claim)
        if name is None and tenants.cfg.identify == "user_suffix" and "." in user:
            user, _, name = user.rpartition(".")
        if name is None:
            return user, None
        tenant = tenants.by_name.get(name)
        if tenant is None:
            raise Refused(f'unknown tenant "{name}"', 401)
        return user, tenant

    def _bearer(self, token):
        """(user, JWT claims or None) of a bearer token; Refused (401) when it does not check out."""
        from ..auth import api_keys, jwt as jwt_method
        from ..auth.rules import Refused as AuthRefused
        config = self.proxy.config
        try:
            if token.startswith(api_keys.PREFIX):
                key_id = token[len(api_keys.PREFIX):].partition("_")[0]
                entry = api_keys.METHOD._keys(config.auth.api_keys.file).get(key_id)  # noqa: SLF001
                if entry is None:
                    raise AuthRefused("no such key")
                api_keys.METHOD.check(config, entry["user"], self.cfg.database, token)
                return entry["user"], None
            import jwt
            claim = jwt.decode(token, options={"verify_signature": False}).get(config.auth.jwt.user_claim)
            user = config.auth.map.get(claim, claim) if isinstance(claim, str) else None
            if not user:
                raise AuthRefused("no user claim")
            return user, jwt_method.METHOD.check(config, user, token)
        except (AuthRefused, ValueError, OSError, KeyError) as e:
            log.info("graphql: a bearer token was refused: %s", e)
            raise Refused("invalid bearer token", 401) from None
        except Exception as e:  # (pyjwt's own errors)
            log.info("graphql: a bearer token was refused: %s: %s", type(e).__name__, e)
            raise Refused("invalid bearer token", 401) from None

    def connect(self):
        cfg, proxy = self.cfg, self.proxy
        creds = Credentials.from_secret(cfg.user, proxy.authenticator.users.get(cfg.user))
        node = proxy.buffer.primary()
        return ServerConnection(node, proxy.config.server_dbname(cfg.database), creds, proxy.config).connect(
            {"application_name": APPLICATION_NAME})

    def schema(self, conn, role):
        known = self.schemas.get(role)
        generation = statements.generation("")[0]
        if known is None or known[1] != generation or time.monotonic() - known[0] > self.cfg.schema_ttl_s:
            tables = catalog.load(conn)
            known = self.schemas[role] = (time.monotonic(), generation, build(tables, self.cfg.max_rows))
        return known[2]

    def execute(self, body, authorization):
        """(HTTP status, GraphQL response: a dict, or its JSON text) for a request body {query,
        variables, operationName}."""
        self.requests += 1
        try:
            text = body.get("query") if isinstance(body, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise Refused('a JSON body with "query" is needed')
            variables = body.get("variables")
            if variables is not None and not isinstance(variables, dict):
                raise Refused('"variables" must be an object')
            role, tenant = self.role_of(authorization)  # (who asks first: a stranger's text is not parsed)
            cfg = self.cfg
            try:
                document = parse(text, max_tokens=cfg.max_tokens)
            except GraphQLError as e:
                raise Refused(e.message.replace("Parsing aborted.", "Parsing aborted (graphql.max_tokens)."))\
                    from None
            if depth(document, cfg.max_depth) > cfg.max_depth:
                raise Refused(f"the query is deeper than graphql.max_depth ({cfg.max_depth})")
            if cost(document, cfg.max_cost) > cfg.max_cost:
                raise Refused(f"the query costs more than graphql.max_cost ({cfg.max_cost}): every field, alias "
                              f"and fragment use counts, an introspection root {INTROSPECTION_COST}")
            out = self._run(document, variables, body.get("operationName"), role, tenant)
            text = json.dumps(out, separators=(",", ":"), default=str)  # (once: the route sends this text)
            if len(text) > cfg.max_response_bytes:
                raise Refused(f"the answer ({len(text)} bytes) is larger than graphql.max_response_bytes "
                              f"({cfg.max_response_bytes})", 413)
            return 200, text
        except Refused as e:
            self.errors += 1
            error = {"message": str(e)}
            if e.code:
                error["extensions"] = {"sqlstate": e.code}
            return e.status, {"errors": [error]}
        except (ProxyError, OSError) as e:
            self.errors += 1
            return 502, {"errors": [{"message": f"database: {getattr(e, 'message', e)}",
                                     "extensions": {"sqlstate": getattr(e, "sqlstate", None)}}]}

    def _run(self, document, variables, operation, role, tenant=None):
        conn = self.connect()
        try:
            with self.proxy.own_work.running(self.cfg.database, conn):  # (PAUSE, a switchover's drain wait for it)
                return self._transaction(conn, document, variables, operation, role, tenant)
        finally:
            conn.close()

    def _transaction(self, conn, document, variables, operation, role, tenant):
        """The request's transaction on conn: its answer."""
        conn.execute("BEGIN")
        conn.execute(f"SET LOCAL ROLE {query.ident(role)}")
        conn.execute(f"SET LOCAL statement_timeout = {int(self.cfg.statement_timeout_ms)}")
        forced = tenant.forced() if tenant is not None else {}
        if tenant is not None:  # helios.tenant(): its proof on this connection (tenancy/proof.py)
            forced[PROOF_SETTING] = self.proxy.tenants.prover.proof(conn, tenant)
        if forced:  # (tenancy/: its helios.tenant, search_path... for this transaction)
            conn.fetch("SELECT " + ", ".join(f"pg_catalog.set_config(${2 * i + 1}, ${2 * i + 2}, true)"
                                             for i in range(len(forced))), [x for kv in forced.items() for x in kv])
        schema = self.schema(conn, (role, tenant.name if tenant is not None else None))
        problems = validate(schema, document)
        if problems:
            conn.execute("ROLLBACK")
            self.errors += 1
            return {"errors": [e.formatted for e in problems]}
        request = Request(conn, self.cfg.max_rows)
        result = execute_sync(schema, document, variable_values=variables, operation_name=operation,
                              field_resolver=yielding_resolver(),
                              context_value=request)
        conn.execute("ROLLBACK" if result.errors else "COMMIT")
        out = {"data": result.data}
        if result.errors:
            self.errors += 1
            out["errors"] = [e.formatted for e in result.errors]
        return out
