"""Function URLs (SPEC section 13): one HTTP listener per function (:mod:`.listener`, the App's set
of them in :mod:`.listeners`), a request as the payload format 2.0 event and a result as the HTTP
response (:mod:`.event`, pure), and CORS (:mod:`.cors`, pure)."""
