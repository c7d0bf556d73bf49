"""A GraphQL schema from a role's catalog (catalog.py): a root field per table or view, named as
the table, with `where`, `order_by`, `limit`, `offset`; object relationships from foreign keys
(named after the column without `_id`), array relationships from referencing tables (named as
that table); mutations `insert_T`, `update_T`, `delete_T` where the role may. Nested levels load
for all their parents at once (query.py)."""
import json

import gevent
from graphql import (GraphQLArgument, GraphQLBoolean, GraphQLEnumType, GraphQLField, GraphQLFloat,
                     GraphQLInputField, GraphQLInputObjectType, GraphQLInt, GraphQLList, GraphQLNonNull,
                     GraphQLObjectType, GraphQLScalarType, GraphQLSchema, GraphQLString)

from . import query

JSON = GraphQLScalarType("JSON", description="A json or jsonb value.", serialize=lambda v: v,
                         parse_value=lambda v: v)
BIGINT = GraphQLScalarType("BigInt", description="bigint and numeric, as a string: no precision lost.",
                           serialize=str, parse_value=str)
SCALARS = {16: GraphQLBoolean, 21: GraphQLInt, 23: GraphQLInt, 20: BIGINT, 1700: BIGINT, 700: GraphQLFloat,
           701: GraphQLFloat, 114: JSON, 3802: JSON}
READ = {16: lambda v: v == "t", 21: int, 23: int, 700: float, 701: float, 114: json.loads, 3802: json.loads}
ORDER = GraphQLEnumType("order_by", {"asc": "asc", "desc": "desc"})


def comparison(scalar, cache={}):  # noqa: B006 - one input type per scalar, shared by the schema
    name = f"{scalar.name}_comparison_exp"
    if name not in cache:
        fields = {op: GraphQLInputField(scalar) for op in query.OPERATORS}
        fields["_in"] = GraphQLInputField(GraphQLList(GraphQLNonNull(scalar)))
        fields["_is_null"] = GraphQLInputField(GraphQLBoolean)
        cache[name] = GraphQLInputObjectType(name, fields)
    return cache[name]


def rows_of(table, raw_rows, columns):
    out = []
    for i, raw in enumerate(raw_rows):
        if i % 1000 == 999:
            gevent.sleep(0)  # (a large level: the proxy's other clients run meanwhile)
        row = {}
        for column, value in zip(columns, raw):
            read = READ.get(table.columns.get(column))
            row[column] = value if value is None or read is None else read(value)
        out.append(row)
    return out


def build(tables, max_rows):
    """A GraphQLSchema for {name: Table}; resolvers run SQL through info.context.run(sql, params)."""
    comparison.__defaults__[0].clear()
    objects, bool_exps, orders = {}, {}, {}

    def scalar(table, column):
        return SCALARS.get(table.columns[column], GraphQLString)

    for table in tables.values():
        bool_exps[table.name] = GraphQLInputObjectType(f"{table.name}_bool_exp", lambda t=table: {
            **{c: GraphQLInputField(comparison(scalar(t, c))) for c in t.columns},
            "_and": GraphQLInputField(GraphQLList(GraphQLNonNull(bool_exps[t.name]))),
            "_or": GraphQLInputField(GraphQLList(GraphQLNonNull(bool_exps[t.name]))),
            "_not": GraphQLInputField(bool_exps[t.name])})
        orders[table.name] = GraphQLInputObjectType(f"{table.name}_order_by",
                                                    {c: GraphQLInputField(ORDER) for c in table.columns})

    def list_args(name):
        return {"where": GraphQLArgument(bool_exps[name]),
                "order_by": GraphQLArgument(GraphQLList(GraphQLNonNull(orders[name]))),
                "limit": GraphQLArgument(GraphQLInt), "offset": GraphQLArgument(GraphQLInt)}

    def object_fields(table):
        fields = {c: GraphQLField(scalar(table, c)) for c in table.columns}
        for name, column, parent, parent_column in table.parents:
            fields[name] = GraphQLField(objects[parent.name], resolve=parent_resolver(parent, column, parent_column))
        for name, child, column, my_column in table.children:
            fields[name] = GraphQLField(GraphQLNonNull(GraphQLList(GraphQLNonNull(objects[child.name]))),
                                        args=list_args(child.name),
                                        resolve=children_resolver(child, column, my_column))
        return fields

    for table in tables.values():
        objects[table.name] = GraphQLObjectType(table.name, lambda t=table: object_fields(t))

    def root_resolver(table):
        def resolve(_, info, **args):
            columns = needed(table, info)
            sql, params = query.select(table, columns, args, max_rows)
            rows = rows_of(table, info.context.run(sql, params), columns)
            return siblings(rows)
        return resolve

    def parent_resolver(parent, column, parent_column):
        def resolve(row, info):
            key = row.get(column)
            if key is None:
                return None
            found = info.context.level(info, parent, parent_column, row, column, {}, max_rows)
            return (found.get(str(key)) or [None])[0]
        return resolve

    def children_resolver(child, column, my_column):
        def resolve(row, info, **args):
            found = info.context.level(info, child, column, row, my_column, args, max_rows)
            return found.get(str(row.get(my_column)), [])
        return resolve

    query_fields = {name: GraphQLField(GraphQLNonNull(GraphQLList(GraphQLNonNull(objects[name]))),
                                       args=list_args(name), resolve=root_resolver(table))
                    for name, table in tables.items()}
    mutation_fields = {}
    for name, table in tables.items():
        response = GraphQLObjectType(f"{name}_mutation_response", {
            "affected_rows": GraphQLField(GraphQLNonNull(GraphQLInt)),
            "returning": GraphQLField(GraphQLNonNull(GraphQLList(GraphQLNonNull(objects[name]))))})
        values = {c: GraphQLInputField(scalar(table, c)) for c in table.columns}
        if table.insert:
            insert_input = GraphQLInputObjectType(f"{name}_insert_input", values)
            mutation_fields[f"insert_{name}"] = GraphQLField(response, args={
                "objects": GraphQLArgument(GraphQLNonNull(GraphQLList(GraphQLNonNull(insert_input))))},
                resolve=insert_resolver(table))
        if table.update:
            set_input = GraphQLInputObjectType(f"{name}_set_input", dict(values))
            mutation_fields[f"update_{name}"] = GraphQLField(response, args={
                "where": GraphQLArgument(GraphQLNonNull(bool_exps[name])), "_set": GraphQLArgument(set_input)},
                resolve=update_resolver(table))
        if table.delete:
            mutation_fields[f"delete_{name}"] = GraphQLField(response, args={
                "where": GraphQLArgument(GraphQLNonNull(bool_exps[name]))}, resolve=delete_resolver(table))
    if not query_fields:  # a role that may read no table: a valid schema that says so (GraphQL errors, not a 500)
        query_fields = {"_no_tables": GraphQLField(GraphQLBoolean, description="This role may read no table.",
                                                   resolve=lambda *_: True)}
    return GraphQLSchema(GraphQLObjectType("query_root", query_fields),
                         GraphQLObjectType("mutation_root", mutation_fields) if mutation_fields else None)


def siblings(rows):
    """Every row of a level knows the others: the next level loads for all of them at once."""
    for row in rows:
        row["__level__"] = rows
    return rows


def needed(table, info):
    """The columns a field's selection needs: its scalar fields and the keys of its relationships."""
    wanted = []
    for node in info.field_nodes:
        for sel in node.selection_set.selections if node.selection_set else ():
            name = getattr(sel, "name", None) and sel.name.value
            if name in table.columns:
                wanted.append(name)
    wanted += [column for _, column, _, _ in table.parents] + [column for _, _, _, column in table.children]
    return list(dict.fromkeys(wanted or list(table.columns)[:1]))


def _mutation_rows(info, table, sql, params):
    columns = list(table.columns)
    rows = rows_of(table, info.context.run(sql + " RETURNING " + ", ".join(query.ident(c) for c in columns),
                                           params), columns)
    return {"affected_rows": len(rows), "returning": siblings(rows)}


def insert_resolver(table):
    def resolve(_, info, objects):
        if not objects:
            return {"affected_rows": 0, "returning": []}
        columns = list(dict.fromkeys(c for o in objects for c in o))
        params = query.Params()
        values = ", ".join("(" + ", ".join(params.add(o[c]) if c in o else "DEFAULT" for c in columns) + ")"
                           for o in objects)
        sql = f"INSERT INTO {query.ident(table.name)} ({', '.join(map(query.ident, columns))}) VALUES {values}"
        return _mutation_rows(info, table, sql, params.values)
    return resolve


def update_resolver(table):
    def resolve(_, info, where, _set=None):
        if not _set:
            raise ValueError("update needs _set")
        params = query.Params()
        sets = ", ".join(f"{query.ident(c)} = {params.add(v)}" for c, v in _set.items())
        cond = query.where_sql(table, where, params)
        sql = f"UPDATE {query.ident(table.name)} t SET {sets} WHERE {cond}"
        return _mutation_rows(info, table, sql, params.values)
    return resolve


def delete_resolver(table):
    def resolve(_, info, where):
        params = query.Params()
        sql = f"DELETE FROM {query.ident(table.name)} t WHERE {query.where_sql(table, where, params)}"
        return _mutation_rows(info, table, sql, params.values)
    return resolve
