"""The query rewriter (the spec's "rule-based SQL transformation engine: schema prefixing, query
normalization"): the ordered `[[rewrite]]` rules of the configuration, then those plugins
contribute through the `rewrite_rules` hook, applied by the rewrite stage
(pipeline/stages/rewrite.py) to every Query and Parse text. A rewritten Parse keeps its name and
parameter types: a named statement's text is rewritten once, when it is prepared.

A reload builds a new Rewriter and swaps it in whole: a query sees the old rules or the new ones.
"""
import logging
from types import SimpleNamespace

from ..sqlshape import fingerprint_of, normalized
from .rules import Rule

log = logging.getLogger(__name__)
RULE_KEYS = ("name", "match", "fingerprint", "replace", "schema_prefix", "normalize", "hint", "database", "user",
             "apply", "dry_run")


class Rewriter:
    def __init__(self, config, plugins=None):
        self.rules = [Rule(cfg) for cfg in config.rewrite]
        for name, table in plugin_rules(plugins):
            try:
                cfg = SimpleNamespace(**{**dict.fromkeys(RULE_KEYS, ""), "replace": None, "normalize": False,
                                         "apply": "all", "dry_run": False, **table})
                self.rules.append(Rule(cfg, source=f"plugin {name}"))
            except (TypeError, ValueError) as e:
                log.error("plugin %s: rewrite rule %r refused: %s", name, table.get("name"), e)

        # Every rule needs a substring of its own (a match without metacharacters): a text with
        # none of them is left as it is at the cost of one search per rule (the usual case).
        self.screen = (tuple(rule.literal for rule in self.rules)
                       if all(rule.literal is not None for rule in self.rules) else None)

    def __bool__(self):
        return bool(self.rules)

    @property
    def literals(self):
        """Whether some rule matches by a plain substring (of the lower-case text)."""
        return any(rule.literal is not None for rule in self.rules)

    def rewrite(self, sql, session, lower=None):
        """The text after every rule that applies (sql itself when none changed it); lower: sql.lower()
        when known (the pipeline's). Runs for every query: no allocation unless a rule applies."""
        fp = None
        for rule in self.rules:
            if rule.scoped and not rule.for_session(session):
                continue
            if rule.literal is not None:  # (a match without metacharacters: a substring test)
                if lower is None:
                    lower = sql.lower()
                if rule.literal not in lower:
                    continue
            elif rule.pattern is not None and rule.pattern.search(sql) is None:
                continue
            if rule.fingerprint is not None:
                if fp is None:
                    fp = fingerprint_of(sql)
                if fp != rule.fingerprint:
                    continue
            new = rule.apply(sql)
            if new != sql:
                if rule.dry_run:
                    rule.dry_hits += 1
                    log.info("rewrite rule %s (dry run) would change %r into %r", rule.name,
                             normalized(sql)[:300], normalized(new)[:300])
                else:
                    rule.hits += 1
                    sql, fp, lower = new, None, None
            if rule.stop:
                break
        return sql

    def view(self):
        return [rule.view() for rule in self.rules]


def plugin_rules(plugins):
    """[(plugin name, rule table)] from the plugins' rewrite_rules hooks."""
    if plugins is None:
        return []
    out = []
    for impl in plugins.pm.hook.rewrite_rules.get_hookimpls():
        ok, tables = plugins._call(impl)  # noqa: SLF001 - isolated like every hook call
        if ok and tables:
            out += [(impl.plugin_name, dict(t)) for t in tables if isinstance(t, dict)]
    return out
