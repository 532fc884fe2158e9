"""stocksync: multichannel inventory sync over Redis (see README.md and docs/architecture.md).

__version__ is the one version of the project: the package's (pyproject.toml reads it from here), what
`stocksync --version` prints and what the OpenAPI document states. The function library in
lua/stocksync.lua has a contract version of its own (stocksync_version; functions.library_version()).
"""

__version__ = "0.6.0"
