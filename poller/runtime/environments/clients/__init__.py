"""The runtime interface clients that poller ships for its environments: ``bootstrap.py`` (AWS's
awslambdaric with ``async def`` handlers) and ``node/index.mjs`` (a Node.js client of poller's
own). Each is run by path in an environment, never imported into poller."""
