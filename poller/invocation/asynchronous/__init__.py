"""Asynchronous invocation (SPEC section 13): the durable queue of accepted events (:mod:`.queue`,
the SQLite store in :mod:`.store`), the workers that attempt and retry them (:mod:`.invoker`,
:mod:`.attempts`), when to retry and when to give up (:mod:`.schedule`, pure), what destinations
receive (:mod:`.record`, pure) and sending it to them (:mod:`.delivery`)."""
