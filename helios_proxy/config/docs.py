"""Render docs/configuration.md from the schema: `python -m helios_proxy.config.docs > docs/configuration.md`."""
from .schema import NODE_SETTINGS, SETTINGS

HEADER = """# Configuration reference

Generated from `helios_proxy/config/schema.py` by `python -m helios_proxy.config.docs`; do not edit
by hand (a test fails when this file is stale).

The file is TOML. Every setting may be overridden by the environment variable
`HELIOS_<SECTION>__<KEY>` (for example `HELIOS_POOL__MAX_SIZE=50`). Settings marked *reload* take
effect on SIGHUP; the others need a restart. Secret settings never appear in logs.
"""


def _fmt(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return "(required)" if value is None else repr(value)


def _num(v):
    return int(v) if float(v).is_integer() else v


def _row(s):
    notes = []
    if s.choices:
        notes.append("one of " + ", ".join(f"`{c}`" for c in s.choices))
    if s.min is not None:
        notes.append(f"min {_num(s.min)}")
    if s.max is not None:
        notes.append(f"max {_num(s.max)}")
    if s.reloadable:
        notes.append("*reload*")
    if s.secret:
        notes.append("*secret*")
    extra = f" ({'; '.join(notes)})" if notes else ""
    desc = s.description.replace("|", "\\|")
    return f"| `{s.key}` | {s.type.__name__} | `{_fmt(s.default)}` | {desc}{extra} |"


def render():
    out = [HEADER]
    sections = []
    for s in SETTINGS:
        if s.section not in sections:
            sections.append(s.section)
    for section in sections:
        out.append(f"\n## [{section}]\n\n| key | type | default | description |\n|---|---|---|---|")
        out.extend(_row(s) for s in SETTINGS if s.section == section)
    out.append("\n## [[nodes]]\n\nOne table per PostgreSQL server.\n\n"
               "| key | type | default | description |\n|---|---|---|---|")
    out.extend(_row(s) for s in NODE_SETTINGS)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
