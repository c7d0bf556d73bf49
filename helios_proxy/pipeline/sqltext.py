"""Cheap screens over SQL text, run on every query before the real parser (pglast) is asked.

A screen may say yes too often (the parser then decides), never too rarely.
"""
import re

_COMMENTS = r"(?:\s|/\*.*?\*/|--[^\n]*\n)*"


def leading(*keywords):
    """A regex finding any of keywords at the start of a statement (after ';' or comments)."""
    return re.compile(r"(?:^|;)" + _COMMENTS + r"(?:" + "|".join(keywords) + r")\b", re.I | re.S)
