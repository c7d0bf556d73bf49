"""GraphQL arguments as SQL (with $n parameters, never text pasted in), and the loading of one
level of a nested query for all its parents at once (DataLoader semantics: `WHERE fk = ANY($1)`)."""
from ..errors import INVALID_PARAMETER_VALUE as INVALID_PARAMETER, ProxyError

OPERATORS = {"_eq": "=", "_neq": "<>", "_gt": ">", "_gte": ">=", "_lt": "<", "_lte": "<=", "_like": "LIKE"}


def ident(name):
    return '"' + name.replace('"', '""') + '"'


class Params:
    def __init__(self):
        self.values = []

    def add(self, value):
        self.values.append(None if value is None else (("true" if value else "false") if isinstance(value, bool)
                                                       else str(value)))
        return f"${len(self.values)}"


def where_sql(table, where, params, alias="t"):
    """A GraphQL `where` ({col: {_eq: v}}, _and, _or, _not) as a SQL condition."""
    parts = []
    for key, value in (where or {}).items():
        if key == "_and":
            parts.append("(" + " AND ".join(where_sql(table, w, params, alias) for w in value) + ")" if value else "true")
        elif key == "_or":
            parts.append("(" + " OR ".join(where_sql(table, w, params, alias) for w in value) + ")" if value else "false")
        elif key == "_not":
            parts.append("NOT (" + where_sql(table, value, params, alias) + ")")
        else:
            column = f"{alias}.{ident(key)}"
            for op, operand in value.items():
                if op == "_is_null":
                    parts.append(f"{column} IS {'' if operand else 'NOT '}NULL")
                elif op == "_in":
                    parts.append(f"{column}::text = ANY({params.add(_array(operand))}::text[])")
                else:
                    parts.append(f"{column} {OPERATORS[op]} {params.add(operand)}")
    return " AND ".join(parts) if parts else "true"


def _array(values):
    return "{" + ",".join('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def order_sql(order_by, alias="t"):
    items = []
    for spec in (order_by if isinstance(order_by, list) else [order_by] if order_by else []):
        items += [f"{alias}.{ident(col)} {direction.upper()}" for col, direction in spec.items()]
    return " ORDER BY " + ", ".join(items) if items else ""


def select(table, columns, args, max_rows, extra_where=None, extra_params=None):
    """SELECT of columns of table for a field's arguments: (sql, params)."""
    params = Params()
    if extra_params is not None:
        params.values += extra_params
    cond = where_sql(table, args.get("where"), params)
    if extra_where:
        cond = f"({extra_where}) AND {cond}"
    limit = args.get("limit")
    if limit is not None and limit < 0 or (args.get("offset") or 0) < 0:
        raise ProxyError("limit and offset must not be negative", sqlstate=INVALID_PARAMETER)
    limit = max_rows if limit is None else min(limit, max_rows)
    sql = (f"SELECT {', '.join(f't.{ident(c)}' for c in columns)} FROM {ident(table.name)} t WHERE {cond}"
           f"{order_sql(args.get('order_by'))} LIMIT {int(limit)} OFFSET {int(args.get('offset') or 0)}")
    return sql, params.values


def level(run, table, columns, key_column, keys, args, max_rows):
    """Rows of table whose key_column is one of keys, for all parents at once: {key: [row]}; each
    parent's limit/offset applied to its own rows (a window per parent)."""
    params = Params()
    keys_param = params.add(_array(sorted({str(k) for k in keys if k is not None})))
    cond = f"t.{ident(key_column)}::text = ANY({keys_param}::text[]) AND " + where_sql(table, args.get("where"), params)
    limit = args.get("limit")
    limit = max_rows if limit is None else min(limit, max_rows)
    offset = int(args.get("offset") or 0)
    order = order_sql(args.get("order_by")) or f" ORDER BY t.{ident(key_column)}"
    wanted = list(dict.fromkeys([*columns, key_column]))
    sql = (f"SELECT * FROM (SELECT {', '.join(f't.{ident(c)}' for c in wanted)}, pg_catalog.row_number() OVER "
           f"(PARTITION BY t.{ident(key_column)}{order}) AS helios_n FROM {ident(table.name)} t WHERE {cond}) s "
           f"WHERE helios_n > {offset} AND helios_n <= {offset + int(limit)} ORDER BY helios_n")
    out = {}
    for row in run(sql, params.values):
        record = dict(zip(wanted, row))
        out.setdefault(record[key_column], []).append(record)
    return out
