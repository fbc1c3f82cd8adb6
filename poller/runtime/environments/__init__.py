"""Execution environments (SPEC section 12): functions run as they do on Lambda, each environment one
OS process in its own process group, running a runtime interface client that talks to the Lambda
Runtime API that poller serves to that environment alone.

- :mod:`.api`: the Runtime API of one environment (``/runtime/invocation/next``, ``.../response``,
  ``.../error``, ``/runtime/init/error``);
- :mod:`.process`: spawning an environment's process, its exit, its output, killing its process group;
- :mod:`.memory`: the resident memory of an environment's processes;
- :mod:`.runtimes`: how each ``runtime`` starts, its variables, and what ``poller validate`` checks;
- :mod:`.logs`: an environment's output as poller log lines, with Lambda's START, END and REPORT lines;
- :mod:`.environment`: one environment's lifecycle (init, invoke, stop) and its failures;
- :mod:`.pool`: the environments of one function: warm reuse, concurrency, provisioned ones, idle ones.

This package's ``__init__`` imports nothing: :mod:`poller.config` imports :mod:`.runtimes` for its
checks, and the rest imports :mod:`poller.config`.
"""
