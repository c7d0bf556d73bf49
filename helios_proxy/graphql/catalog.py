"""What a role may see, read from PostgreSQL's catalog as that role: the tables and views of its
search_path it may SELECT from (and whether it may INSERT, UPDATE, DELETE), their columns and
types, primary keys, and single-column foreign keys between them."""
from dataclasses import dataclass, field

TABLES = """
SELECT c.oid::int, c.relname, a.attname, a.atttypid::int, a.attnotnull,
       pg_catalog.has_table_privilege(c.oid, 'INSERT'), pg_catalog.has_table_privilege(c.oid, 'UPDATE'),
       pg_catalog.has_table_privilege(c.oid, 'DELETE'),
       COALESCE(a.attnum = ANY(i.indkey), false)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE c.relkind IN ('r', 'v', 'm', 'p') AND n.nspname = ANY(pg_catalog.current_schemas(false))
  AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
  AND pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT')
ORDER BY pg_catalog.array_position(pg_catalog.current_schemas(false), n.nspname), c.relname, a.attnum"""
FOREIGN_KEYS = """
SELECT conrelid::int, (SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = conrelid AND attnum = conkey[1]),
       confrelid::int, (SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = confrelid AND attnum = confkey[1])
FROM pg_catalog.pg_constraint WHERE contype = 'f' AND array_length(conkey, 1) = 1"""


@dataclass
class Table:
    oid: int
    name: str
    columns: dict = field(default_factory=dict)  # name -> type oid (in column order)
    not_null: set = field(default_factory=set)
    primary_key: list = field(default_factory=list)
    insert: bool = False
    update: bool = False
    delete: bool = False
    parents: list = field(default_factory=list)   # (field name, fk column, parent Table, its column)
    children: list = field(default_factory=list)  # (field name, child Table, its fk column, my column)


def load(conn):
    """{name: Table} the connection's current role may read (the first of a name in search_path)."""
    tables, by_oid = {}, {}
    for oid, name, column, type_oid, not_null, ins, upd, dele, in_pk in conn.execute(TABLES):
        oid = int(oid)
        table = by_oid.get(oid)
        if table is None:
            if name in tables:  # (a table of the same name earlier in search_path hides it)
                continue
            table = tables[name] = by_oid[oid] = Table(oid, name, insert=ins == "t", update=upd == "t",
                                                       delete=dele == "t")
        table.columns[column] = int(type_oid)
        if not_null == "t":
            table.not_null.add(column)
        if in_pk == "t":
            table.primary_key.append(column)
    for child_oid, column, parent_oid, parent_column in conn.execute(FOREIGN_KEYS):
        child, parent = by_oid.get(int(child_oid)), by_oid.get(int(parent_oid))
        if child is None or parent is None or column not in child.columns or parent_column not in parent.columns:
            continue
        name = column[:-3] if column.endswith("_id") and len(column) > 3 else f"{column}_{parent.name}"
        if name not in child.columns:
            child.parents.append((name, column, parent, parent_column))
        if child.name not in parent.columns:
            parent.children.append((child.name, child, column, parent_column))
    return tables
