"""/graphql: the GraphQL gateway (graphql/). POST {query, variables, operationName}; GET: GraphiQL.
Authenticated by its own bearer tokens (JWT or API key of the auth proxy) or anonymous_role, not
by the admin tokens."""
from flask import Blueprint, Response, jsonify, request

from .common import feature

bp = Blueprint("graphql", __name__)
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>HeliosProxy GraphQL</title>
<link rel="stylesheet" href="https://unpkg.com/graphiql@3/graphiql.min.css"></head>
<body style="margin:0"><div id="graphiql" style="height:100vh"></div>
<script crossorigin src="https://unpkg.com/react@18/umd/react.production.min.js"></script>
<script crossorigin src="https://unpkg.com/react-dom@18/umd/react-dom.production.min.js"></script>
<script crossorigin src="https://unpkg.com/graphiql@3/graphiql.min.js"></script>
<script>ReactDOM.createRoot(document.getElementById('graphiql')).render(React.createElement(GraphiQL,
{fetcher: GraphiQL.createFetcher({url: location.pathname})}));</script></body></html>"""


def _gateway():
    return feature("graphql", "the GraphQL gateway is off (graphql.enabled = false)")


@bp.get("/graphql")
def page():
    """GraphiQL, an in-browser GraphQL IDE (loaded from unpkg.com by the browser)."""
    _gateway()
    return Response(PAGE, mimetype="text/html")


@bp.post("/graphql/refresh")
def refresh():
    """Read every role's schema from the catalog again at its next request (after DDL made
    straight on PostgreSQL; DDL through pooled clients of the proxy does this by itself)."""
    _gateway().schemas.clear()
    return jsonify(refreshed=True)


@bp.post("/graphql")
def execute():
    """Run a GraphQL request as the bearer token's role (or anonymous_role)."""
    gateway = _gateway()
    body = request.get_json(silent=True)
    status, out = gateway.execute(body, request.headers.get("Authorization"))
    if isinstance(out, str):  # (an answer, serialized once by the gateway)
        return Response(out, status=status, mimetype="application/json")
    return jsonify(out), status
