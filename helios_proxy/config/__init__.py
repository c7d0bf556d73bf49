"""Configuration: every setting declared once (schema.py), loaded from TOML plus environment (loader.py)."""
from .loader import Config, load, load_file, runtime_value  # noqa: F401
