"""Invoking functions from outside a mapping (SPEC section 13): the Lambda Invoke API on the admin
server (:mod:`~poller.invocation.api`, its errors, the names it resolves), the synchronous
invocation that it and ``poller invoke`` share (:mod:`~poller.invocation.sync`), the SigV4 check of
requests (:mod:`~poller.invocation.sigv4`), function URLs (:mod:`poller.invocation.urls`) and
asynchronous invocation (:mod:`poller.invocation.asynchronous`)."""
