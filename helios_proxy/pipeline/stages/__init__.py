"""One file per pipeline stage."""
