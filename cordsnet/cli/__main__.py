"""``python -m cordsnet.cli``: the same as ``cordsnet-cli``."""

from . import main

main()
