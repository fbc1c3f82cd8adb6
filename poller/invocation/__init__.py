"""Invoking functions from outside a mapping (SPEC section 13): the Lambda Invoke API on the admin
server (:mod:`~poller.invocation.api`), the synchronous invocation that it and ``poller invoke``
share (:mod:`~poller.invocation.sync`), the SigV4 check of its requests
(:mod:`~poller.invocation.sigv4`), the seam to asynchronous invocation
(:class:`~poller.invocation.queue.EventQueue`), and function URLs
(:mod:`~poller.invocation.function_url`)."""
