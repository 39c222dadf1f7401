"""`python -m adr_scale.tune`, the search's entry point (`__main__.py`); the search itself is
`adr_scale.search`, whose driver's docstring `--help` shows, examples included."""

from adr_scale.search.driver import main

__all__ = ["main"]
