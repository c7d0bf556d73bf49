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


# fast_key: a cheaper key than skeleton() for texts whose only digits are literals': the text with
# every digit made 0 by a byte table, so texts that differ only in their numbers (of the same
# lengths) share it. Whether a digit may belong to a name (t1, $1, "col2", a non-ASCII name) is a
# property of the key itself (the other bytes are the text's, the digits are where they were), so
# it is checked once per key, when a key is kept (fast_key_sound), not for every text looked up.
DIGITS_TO_0 = bytes.maketrans(b"123456789", b"000000000")
_NAME = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_$\"" + bytes(range(128, 256))
CLASSES = bytes.maketrans(_NAME + b"0", b"a" * len(_NAME) + b"0")  # name bytes: a


def fast_key(sql):
    """sql as UTF-8 with every digit as 0. Only a key that fast_key_sound() accepts may stand for
    the texts that have it."""
    return sql.encode().translate(DIGITS_TO_0)


def fast_key_sound(key):
    """No digit follows a name's byte (a letter, _, $, a double quote, a non-ASCII byte): every
    digit is a literal's (or in a string or comment), so texts with this key share one shape."""
    return b"a0" not in key.translate(CLASSES)


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
