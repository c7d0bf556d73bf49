"""`python -m helios_proxy` is `helios-proxy`."""
from .cli import main

main()
