"""Clients for the connections of a config (``connections:``), and the mapping of each client
library's errors to poller's own, so that no client exception escapes a source or destination."""
