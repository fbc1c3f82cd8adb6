"""Development tooling: local stand-in brokers, ``poller dev`` and sample events. Never used by
``poller run``."""
