"""Schemathesis hooks for the genrep test suite (loaded through SCHEMATHESIS_HOOKS).

`GET /v1/stream` without `limit` is endless by design and the fuzzer reads whole bodies, so every
generated stream request gets a small `limit` (a generated one is kept when it is not a small
integer: the server must reject or cap it, not crash)."""

import schemathesis


@schemathesis.hook
def map_query(context, query):
    op = context.operation
    if op is not None and op.path == "/v1/stream":
        query = dict(query or {})
        limit = query.get("limit")
        if limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit > 4):
            query["limit"] = 4
    return query
