"""The shape of the code, checked by reading it (the AST), so that it holds by construction:

- who writes session state: every assignment through a session object (`session.x = ...`,
  `self.session.x = ...`, `client.x = ...`) comes from a module allowed to write that attribute,
  and `ClientSession` sets no more attributes than it does today. The allowances below are a
  ratchet (issue 32): they may only shrink; a new feature brings its own state object instead;
- stages decide, they do not write through the session;
- imports: no circle between modules;
- SQLSTATEs are named in errors.py only, and no module imports another package's private name.

Each check is also run on a deliberate violation, to show it fails."""
import ast
import os
import re
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "helios_proxy")
SESSION_NAMES = {"session", "client"}
SQLSTATE = re.compile(r"(?=.*[0-9])[0-9A-Z]{5}$")  # (five characters, a digit among them)

# Each part of a session has one owner, the module or package whose code assigns its fields (through
# its methods: `session.settings.changed()`, never `session.settings.dirty = True` from elsewhere).
OWNERS = {
    "identity": "frontend/handshake.py",      # the login (Identity: frontend/identity.py)
    "slot": "frontend/lease_slot.py",
    "plan": "frontend/plan.py",
    "settings": "pool/session_state.py",
    "statements": "pool/prepared.py",
    "route": "routing/state.py",
    "counters": "stats.py",
    "writer": "sockets.py",
    "journal": "continuity/",
    "cache_state": "cache/",
    "analytics_state": "analytics/",
}
# module -> what it assigns through a session besides its own parts: `x` a session attribute,
# `x.y` a field of a part it does not own. A ratchet (issue 32): it may only shrink; a new feature
# brings its own state object (and is its owner) instead.
WRITERS = {
    "analytics/__init__.py": {"analytics_state"},
    "limits/__init__.py": {"limits_held"},
    "frontend/handshake.py": {"sock", "writer", "writer.silent"},  # (TLS replaces the socket)
    "frontend/auth.py": {"identity.auth_claims"},                  # (a step of the login)
    # the two directions of the relay: per-message counts and flags kept inline (instructions)
    "frontend/forward.py": {"counters.bytes_in", "counters.queries", "server.unnamed_owner"},
    "frontend/relay.py": {"cache_state.fill", "counters.bytes_out", "counters.transactions"},
    "frontend/unnamed.py": {"server.unnamed_owner", "statements.unnamed"},
    # (the forwarder's fast path counts as it does: bytes_in and queries also through a local name)
    "frontend/fastpath.py": {"counters.bytes_in", "counters.fast_hits", "counters.fast_misses"},
}
SESSION_ATTRIBUTES_AT_MOST = 15  # ClientSession's own (65 when issue 32 began)
FILES_WRITING_AT_MOST = 8        # modules in WRITERS (13 when issue 32 began)
KNOWN_CIRCLES = set()  # (none left: keep it so)


def owns(module, write):
    """Whether module owns the part a dotted write goes into."""
    owner = OWNERS.get(write.split(".")[0]) if "." in write else None
    return owner is not None and (module == owner or owner.endswith("/") and module.startswith(owner))


def modules():
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT).replace(os.sep, "/"), path


def session_writes(tree):
    """{attribute} assigned through a session object in tree: `session.x = ...` gives "x", a write
    into one of its parts, `session.x.y = ...` (or deeper), gives "x.y"."""
    out = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                chain = []
                while isinstance(t, ast.Attribute):
                    chain.insert(0, t.attr)
                    owner = t.value
                    if isinstance(owner, ast.Name) and owner.id in SESSION_NAMES or \
                            isinstance(owner, ast.Attribute) and owner.attr == "session":
                        out.add(".".join(chain[:2]))
                        break
                    t = owner
    return out


def violations(sources):
    """What breaks the ownership rules in {module: source}."""
    found = []
    for module, source in sources.items():
        writes = {w for w in session_writes(ast.parse(source)) if not owns(module, w)}
        if module.startswith("pipeline/stages/") and writes - WRITERS.get(module, set()):
            found.append(f"{module}: a stage writes through the session: {sorted(writes)}")
            continue
        extra = writes - WRITERS.get(module, set())
        if extra:
            found.append(f"{module}: assigns session.{', session.'.join(sorted(extra))} (not its to write: give "
                         "the feature a state object of its own)")
    return found


def session_attributes(source):
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ClientSession")
    return {t.attr for node in ast.walk(cls) if isinstance(node, ast.Assign) for target in node.targets
            for t in (target.elts if isinstance(target, ast.Tuple) else [target])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}


def imports(module, tree):
    """Modules of helios_proxy that module imports, at its top level or inside a function (a
    deferred import is still a dependency)."""
    package = module[:-3].replace("/", ".").rsplit(".", 1)[0] if "/" in module else ""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target + "." + a.name for a in node.names] if not node.module else [target]
            out.update(names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helios_proxy."):
            out.add(node.module[len("helios_proxy."):])
    return out


def circles(graph):
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(frozenset(group))
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def import_graph():
    graph = defaultdict(set)
    for module, path in modules():
        name = module[:-3].replace("/", ".").removesuffix(".__init__")
        with open(path) as f:
            graph[name] |= {m.removesuffix(".__init__") for m in imports(module, ast.parse(f.read()))}
    known = set(graph)
    return {k: {m for m in ({m if m in known else m.rsplit(".", 1)[0] for m in v} & known)
                if not m.startswith(k + ".")}  # (a package may use its own modules)
            for k, v in graph.items()}


# --- the checks ---------------------------------------------------------------------------------
def test_only_the_owners_write_session_state():
    sources = {}
    for module, path in modules():
        with open(path) as f:
            sources[module] = f.read()
    assert violations(sources) == []


def test_the_ownership_check_fails_on_a_violation():
    bad = {"pipeline/stages/quota.py": "def decide(session, sql):\n    session.quota_left = 3\n",
           "cache/__init__.py": "def hit(self, session):\n    session.cache_off = 'a temporary table'\n"
                                "    session.cache_state.off = True\n",  # (its own part: allowed)
           "frontend/forward.py": "class F:\n    def go(self):\n        self.session.counters.queries, x = 1, 1\n",
           "pipeline/stages/limit.py": "def take(ctx):\n    ctx.session.statements.texts = {}\n",
           "tenancy/__init__.py": "def enter(session):\n    session.settings.dirty = True\n"}
    found = violations(bad)
    assert len(found) == 4, found
    assert "a stage writes through the session" in found[0] and "quota_left" in found[0]
    assert "session.cache_off" in found[1] and "cache_state" not in found[1]
    assert "a stage writes through the session" in found[2] and "statements.texts" in found[2]
    assert "session.settings.dirty" in found[3]  # (forward.py may write counters.queries: allowed)


def test_few_modules_write_through_a_session_and_every_part_has_one_owner():
    assert len(WRITERS) <= FILES_WRITING_AT_MOST
    with open(os.path.join(ROOT, "frontend", "session.py")) as f:
        attributes = session_attributes(f.read())
    parts = attributes - {"proxy", "sock", "writer", "journal", "limits_held", "closing"}
    assert parts - {"slot", "plan"} <= set(OWNERS) and all(isinstance(o, str) for o in OWNERS.values())


def test_the_session_does_not_grow():
    with open(os.path.join(ROOT, "frontend", "session.py")) as f:
        attributes = session_attributes(f.read())
    assert len(attributes) <= SESSION_ATTRIBUTES_AT_MOST, sorted(attributes)


def test_no_new_import_circle():
    found = set(circles(import_graph()))
    assert found <= KNOWN_CIRCLES, [sorted(c) for c in found - KNOWN_CIRCLES]


def sqlstate_definitions(module, tree):
    """Names bound at module level to a five-character SQLSTATE literal (outside errors.py)."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str) and SQLSTATE.match(node.value.value):
            out += [f"{module}: {t.id} = {node.value.value!r}" for t in node.targets if isinstance(t, ast.Name)]
    return out


def private_imports(module, tree):
    """`from ..other import _private` across packages."""
    return [f"{module}: from {'.' * node.level}{node.module} import {a.name}" for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level >= 2 for a in node.names
            if a.name.startswith("_") and not a.name.startswith("__")]


def test_sqlstates_live_in_errors_and_no_private_name_crosses_a_package():
    found = []
    for module, path in modules():
        with open(path) as f:
            tree = ast.parse(f.read())
        if module != "errors.py":
            found += sqlstate_definitions(module, tree)
        found += private_imports(module, tree)
    assert found == []
    bad = ast.parse("from ..config.loader import _table\nINSUFFICIENT_PRIVILEGE = \"42501\"\n")
    assert private_imports("tenancy/x.py", bad) and sqlstate_definitions("tenancy/x.py", bad)


def test_the_circle_check_fails_on_a_circle():
    graph = {"a.x": {"b.y"}, "b.y": {"c.z"}, "c.z": {"a.x"}, "d": {"a.x"}}
    assert circles(graph) == [frozenset({"a.x", "b.y", "c.z"})]
