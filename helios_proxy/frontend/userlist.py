"""Read PgBouncer's userlist.txt format: `"user" "secret"` per line, "" escapes a quote."""
from ..errors import ConfigError


def parse_userlist(text, source="users_file"):
    users = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        fields, pos = [], 0
        while pos < len(line) and len(fields) < 2:
            if line[pos].isspace():
                pos += 1
                continue
            if line[pos] != '"':
                raise ConfigError(f"{source}:{lineno}: expected a double-quoted field")
            value, pos = _quoted(line, pos + 1, source, lineno)
            fields.append(value)
        if len(fields) != 2:
            raise ConfigError(f"{source}:{lineno}: expected \"user\" \"secret\"")
        users[fields[0]] = fields[1]
    return users


def _quoted(line, pos, source, lineno):
    out = []
    while pos < len(line):
        ch = line[pos]
        if ch == '"':
            if line[pos + 1:pos + 2] == '"':
                out.append('"')
                pos += 2
                continue
            return "".join(out), pos + 1
        out.append(ch)
        pos += 1
    raise ConfigError(f"{source}:{lineno}: unterminated quote")


def load_userlist(path):
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return parse_userlist(f.read(), path)
    except OSError as e:
        raise ConfigError(f"auth.users_file: cannot read {path!r}: {e.strerror}") from e
