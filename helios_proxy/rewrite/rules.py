"""One `[[rewrite]]` rule: when it applies, and what it does to a query's text.

A rule applies to a query of its `database`/`user` (names or globs; empty: any) whose text
`match`es (a regular expression, case insensitive; one without metacharacters is tested as a
substring of the lower-case text), or whose pglast `fingerprint` is the given one, or to every
query when it names neither (rewrite/__init__.py applies them). It then, in this order: replaces what `match`
found with `replace` (groups as \\1 or \\g<name>), qualifies unqualified tables with
`schema_prefix`, `normalize`s (comments other than /*+ hints */ dropped, runs of spacing made one
space), and puts `/*+ hint */` in front. `apply = "first"` stops the rules after this one when it
applied (ProxySQL's `apply`); `"all"` goes on. `dry_run = true` counts and logs what it would
have changed and changes nothing.

Rules are checked when the configuration is (problems() names the rule): a bad pattern, a
replacement that names a group the pattern lacks, a rule that does nothing.
"""
import re
from fnmatch import fnmatchcase

from pglast import parse_sql
from pglast.parser import ParseError, scan
from pglast.stream import RawStream
from pglast.visitors import Visitor

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
LEADING_COMMENTS = re.compile(r"^(\s*/\*.*?\*/)+\s*", re.S)


def problems(rules, where="rewrite"):
    """What is wrong with [[rewrite]] tables (namespaces from the config loader), one line each."""
    out, names = [], set()
    for i, cfg in enumerate(rules):
        label = f"{where}[{i}] ({cfg.name!r})" if cfg.name else f"{where}[{i}]"
        try:
            Rule(cfg)
        except ValueError as e:
            out.append(f"{label}: {e}")
        if cfg.name in names:
            out.append(f"{label}: the name is used twice")
        names.add(cfg.name)
    return out


LITERALS = frozenset(("SCONST", "USCONST", "BCONST", "XCONST"))


def outside_literals(sql, change):
    """sql with change(part) applied to each part outside its string constants ('...', E'...',
    U&'...', $tag$...$tag$, bit strings): a rule rewrites the SQL, never the data it carries. A text
    the scanner cannot read (an unterminated quote) is left as it is."""
    try:
        tokens = scan(sql)
    except ParseError:
        return sql
    out, at = [], 0
    for token in tokens:
        if token.name in LITERALS:
            out.append(change(sql[at:token.start]))
            out.append(sql[token.start:token.end + 1])
            at = token.end + 1
    out.append(change(sql[at:]))
    return "".join(out)


class Rule:
    def __init__(self, cfg, source="config"):
        self.name, self.source = cfg.name, source
        self.database, self.user = cfg.database, cfg.user
        self.scoped = bool(cfg.database or cfg.user)  # (else for_session is always true)
        self.fingerprint = cfg.fingerprint or None
        self.replace = cfg.replace
        self.schema_prefix = cfg.schema_prefix or None
        self.normalize, self.hint = cfg.normalize, cfg.hint or None
        self.stop = cfg.apply == "first"
        self.in_literals = getattr(cfg, "in_literals", False)  # replace inside string and dollar-quoted literals too
        self.dry_run = cfg.dry_run
        self.hits = self.dry_hits = 0
        self.pattern = self.literal = None
        if cfg.match:
            try:
                self.pattern = re.compile(cfg.match, re.IGNORECASE)
            except re.error as e:
                raise ValueError(f"match: bad regular expression {cfg.match!r}: {e}") from None
            if not re.search(r"[\\.^$*+?{}\[\]|()]", cfg.match):
                self.literal = cfg.match.lower()  # (no metacharacter: a substring test is enough)
        if self.replace is not None:
            if self.pattern is None:
                raise ValueError("replace needs match (the text it replaces)")
            try:
                self.pattern.sub(self.replace, "")  # (groups are only resolved on a match:)
                re._parser.parse_template(self.replace, self.pattern)  # noqa: SLF001 - the one place re checks them
            except (re.error, IndexError) as e:
                raise ValueError(f"replace: {e}") from None
            except AttributeError:  # (a Python without it: the first match reports a bad group)
                pass
        if self.schema_prefix is not None and not IDENTIFIER.match(self.schema_prefix):
            raise ValueError(f"schema_prefix: {self.schema_prefix!r} is not a plain schema name")
        if self.hint is not None and "*/" in self.hint:
            raise ValueError("hint: must not contain */")
        if self.replace is None and self.schema_prefix is None and not self.normalize and self.hint is None:
            raise ValueError("does nothing: give replace, schema_prefix, normalize or hint")

    def for_session(self, session):
        return ((not self.database or fnmatchcase(session.identity.database or "", self.database))
                and (not self.user or fnmatchcase(session.identity.user or "", self.user)))

    def apply(self, sql):
        if self.replace is not None:
            if self.in_literals:
                sql = self.pattern.sub(self.replace, sql)
            elif self.pattern.search(sql):  # (only then: the text's literals are found by the scanner)
                sql = outside_literals(sql, lambda part: self.pattern.sub(self.replace, part))
        if self.schema_prefix is not None:
            sql = qualify(sql, self.schema_prefix)
        if self.normalize:
            sql = canonical(sql)
        if self.hint is not None:
            sql = f"/*+ {self.hint} */ {sql}"
        return sql

    def view(self):
        return {"name": self.name, "source": self.source, "match": self.pattern.pattern if self.pattern else None,
                "fingerprint": self.fingerprint, "replace": self.replace, "schema_prefix": self.schema_prefix,
                "normalize": self.normalize, "hint": self.hint, "database": self.database or None,
                "user": self.user or None, "apply": "first" if self.stop else "all", "dry_run": self.dry_run,
                "hits": self.hits, "dry_run_hits": self.dry_hits}


class _Unqualified(Visitor):
    """Table references without a schema, that are not the query's own CTE names."""

    def __init__(self):
        super().__init__()
        self.tables, self.ctes = [], set()

    def visit_CommonTableExpr(self, parent, node):
        self.ctes.add(node.ctename)

    def visit_RangeVar(self, parent, node):
        if node.schemaname is None:
            self.tables.append(node)


def qualify(sql, schema):
    """sql with every unqualified table qualified by schema (printed back by pglast; the comments
    in front, such as routing hints, kept). A text that does not parse is left as it is."""
    try:
        tree = parse_sql(sql)
    except ParseError:
        return sql
    found = _Unqualified()
    found(tree)
    changed = False
    for node in found.tables:
        if node.relname not in found.ctes:
            node.schemaname = schema
            changed = True
    if not changed:
        return sql
    lead = LEADING_COMMENTS.match(sql)
    return (lead.group(0) if lead else "") + RawStream()(tree)


def canonical(sql):
    """Comments dropped (but /*+ hints */), spacing between tokens made one space (none where
    there was none). (Strings continued on the next line are one token: kept as they are.)"""
    try:
        tokens = scan(sql)
    except ParseError:
        return sql
    out, prev = [], None
    for token in tokens:
        text = sql[token.start:token.end + 1]
        if token.name in ("C_COMMENT", "SQL_COMMENT") and not text.startswith("/*+"):
            continue
        if prev is not None and token.start > prev.end + 1:
            out.append(" ")
        out.append(text)
        prev = token
    return "".join(out)
