"""Cheap screens over SQL text, run on every query before the real parser (pglast) is asked.

A screen may say yes too often (the parser then decides), never too rarely. Screens start with
`mentions`, a plain substring test that rejects the usual query in about a tenth of the time of one
case-insensitive regular expression search.
"""
import re

_COMMENTS = r"(?:\s|/\*.*?\*/|--[^\n]*\n)*"


def leading(*keywords):
    """A regex finding any of keywords at the start of a statement (after ';' or comments)."""
    return re.compile(r"(?:^|;)" + _COMMENTS + r"(?:" + "|".join(keywords) + r")\b", re.I | re.S)


def mentions(sql, keywords):
    """Whether any of keywords (lower case) occurs anywhere in sql, in any letter case."""
    low = sql.lower()
    for keyword in keywords:
        if keyword in low:
            return True
    return False
