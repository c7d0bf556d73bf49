"""Cheap screens over SQL text, run on every query before the real parser (pglast) is asked.

A screen may say yes too often (the parser then decides), never too rarely. A case-insensitive
regular expression search costs 1.5-3 us per query; `Leading` looks at the first word of a lone
statement instead and `mentions` is a plain substring test, both about a tenth of that.
"""
import re

_COMMENTS = r"(?:\s|/\*.*?\*/|--[^\n]*\n)*"


def leading(*keywords):
    """A regex finding any of keywords at the start of a statement (after ';' or comments)."""
    return re.compile(r"(?:^|;)" + _COMMENTS + r"(?:" + "|".join(keywords) + r")\b", re.I | re.S)


_WORD = re.compile(r"[A-Za-z0-9_]*")
UNKNOWN = object()  # first_word not computed yet


def first_word(sql):
    """The lower-case first word of sql when it is one statement (a final ';' allowed) that starts
    without a comment ("" if it starts with no word, e.g. "(SELECT 1)"); None otherwise, when only
    a regular expression can tell."""
    body = sql.rstrip()
    if body.endswith(";"):
        body = body[:-1]
    if ";" in body:
        return None
    body = body.lstrip()
    if body[:1] == "/" or body[:1] == "-":  # perhaps a comment before the first word
        return None
    return _WORD.match(body).group().lower()


class Leading:
    """Finds any of keywords at the start of a statement: by the first word of a lone statement
    that starts without a comment, else by the regular expression `leading` makes."""

    def __init__(self, *keywords):
        self.words = frozenset(keywords)
        self.regex = leading(*keywords)

    def search(self, sql, word=UNKNOWN):
        """word: first_word(sql) when the caller has it already."""
        if word is UNKNOWN:
            word = first_word(sql)
        if word is not None:
            return word in self.words
        return self.regex.search(sql) is not None


def head_word(sql, limit=4096):
    """The lower-case first word of sql after whitespace and comments, looking at its first `limit`
    characters only ("" when there is none there): for texts too large to screen whole."""
    body = _HEAD.match(sql, 0, limit)
    return body.group(1).lower() if body else ""


_HEAD = re.compile(r"(?:\s|/\*.*?\*/|--[^\n]*\n)*([A-Za-z_]+)", re.S)
CHUNK = 1 << 20


def large_mentions(sql, keywords):
    """The keywords (lower case) occurring anywhere in a large sql, in any letter case. Scans a
    megabyte at a time and lets other greenlets run in between: a 16 MiB text costs its clients'
    neighbours no long stall, and no whole lower-case copy."""
    import gevent
    found, overlap = set(), max(len(k) for k in keywords) - 1
    for at in range(0, len(sql), CHUNK):
        chunk = sql[at:at + CHUNK + overlap].lower()
        found.update(k for k in keywords if k in chunk)
        if len(found) == len(keywords):
            break
        gevent.sleep(0)
    return found


def mentions(sql, keywords, low=None):
    """Whether any of keywords (lower case) occurs anywhere in sql, in any letter case (low:
    sql.lower() when the caller has it already)."""
    if low is None:
        low = sql.lower()
    for keyword in keywords:
        if keyword in low:
            return True
    return False
