"""The shape of a SQL text, without executing anything: its literals, the text with them taken
out (a cheap key shared by texts that differ only in their values), pglast's fingerprint and its
normalized form. Used by the classifier's and the cache's memos, analytics and the rewriter."""
import hashlib
import re

from pglast.parser import ParseError, fingerprint, normalize

# A literal: a quoted string or a number that is not part of a name. (The lookahead lets the engine
# skip every other character at once: a third faster than the bare alternation.)
LITERALS = re.compile(r"(?=['0-9])(?:'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b)")


def skeleton(sql):
    """sql with every literal as `?`: texts that differ only in their literals (clients that
    interpolate values, pgbench -M simple) share it. None for text with backslashes or dollar
    signs, where this simple pattern could misread where a string ends (E'' strings, $$ quotes)."""
    if "\\" in sql or "$" in sql:
        return None
    return LITERALS.sub("?", sql)


# fast_key: a cheaper key than skeleton() for texts whose only digits are literals' (no name with a
# digit, no $n, no quote): every digit made 0 by a byte table, so texts differing only in their
# numbers (of the same lengths) share it. A tenth of the regular expression's cost.
DIGITS_TO_0 = bytes.maketrans(b"123456789", b"000000000")
_NAME = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_$\""
CLASSES = bytes.maketrans(_NAME + b"123456789", b"a" * len(_NAME) + b"000000000")  # name chars: a, digits: 0


def fast_key(sql):
    """sql with every digit as 0 (bytes), or None when a digit may belong to a name (t1, $1,
    "col2") or a string, or the text is not ASCII."""
    if "'" in sql or not sql.isascii():
        return None
    raw = sql.encode("ascii")
    if b"a0" in raw.translate(CLASSES):
        return None
    return raw.translate(DIGITS_TO_0)


def fingerprint_of(sql):
    """pglast's fingerprint of a query text; a text that does not parse is grouped by its text with
    literals replaced."""
    try:
        return fingerprint(sql)
    except ParseError:
        return "x" + hashlib.blake2b(LITERALS.sub("?", sql).encode(), digest_size=8).hexdigest()[1:]


def normalized(sql):
    """The text with every constant as $n (pg_stat_statements' form), never a literal value."""
    try:
        return normalize(sql)
    except ParseError:
        return LITERALS.sub("?", sql)
