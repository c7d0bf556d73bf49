"""PostgreSQL WAL positions (pg_lsn) as ints, so that they compare and subtract."""


def lsn(text):
    """'16/B374D848' -> an int; None (or '') stays None."""
    if not text:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
