"""The pure core of poller: records and batches, batching, the retry and bisect planner, ordered
commits and the failure record. No asyncio, no clients, no I/O: every decision here is a unit test."""
