"""Invoking functions from outside a mapping (SPEC section 13): the Lambda Invoke API on the admin
server (:mod:`~poller.invocation.api`), the synchronous invocation that it and ``poller invoke``
share (:mod:`~poller.invocation.sync`), the SigV4 check of its requests
(:mod:`~poller.invocation.sigv4`), function URLs (:mod:`~poller.invocation.function_url`), and
asynchronous invocation: the durable queue of accepted events (:mod:`.queue`, :mod:`.async_store`),
the workers that attempt and retry them (:mod:`.async_invoker`, :mod:`.attempts`), when to retry
and when to give up (:mod:`.schedule`, pure), what destinations receive (:mod:`.record`, pure) and
sending it to them (:mod:`.delivery`)."""
