"""The admin API's Idempotency-Key: required on every write; on the stock writes it becomes the library's
reference (`api:<key>` for an order, `api:<key>:<sku>` per SKU), so a retried request changes nothing and
answers the first outcome again. The key names one request: the first valid request of a key that changes
stock stores a digest of its method, path and JSON body under `<prefix>:api:idem:<key>` for as long as
references are remembered (Stripe's rule, and the IETF Idempotency-Key draft's), and the same key sent with
another request is refused (422 idempotency_key_reused) and changes nothing.
"""

from __future__ import annotations

import hashlib
import re

import orjson
from starlette.requests import Request

from stocksync.limits import MAX_REF_BYTES, fit

from .context import Context
from .httputil import HTTPError

_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")


def idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "")
    if not key:
        raise HTTPError(400, "idempotency_key_required", "every write needs an Idempotency-Key header")
    if not _KEY_RE.match(key):
        raise HTTPError(400, "bad_idempotency_key", "Idempotency-Key must be 1-200 printable ASCII characters")
    return key


async def bind_key(request: Request, ctx: Context, key: str, doc: dict) -> bool:
    """Bind the Idempotency-Key to this request (call it once the body is checked, before the change): the
    first request with the key stores the digest of its method, path and body, kept as long as the library
    remembers a reference; a request with the same key and another digest gets 422. The body counts as the
    JSON document it holds (keys sorted), so a retry that serializes it otherwise is still the same request.
    True when the key was bound to this request before (a retry)."""
    what = b"%s %s\n%s" % (request.method.encode(), request.scope["path"].encode(),
                           orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    digest = hashlib.sha256(what).hexdigest()
    store = ctx.store
    first = await store.redis.set(store.keys.api_idem(key), digest, nx=True, get=True,
                                  ex=store.settings.idem_ttl_s)
    if first is not None and first != digest:
        raise HTTPError(422, "idempotency_key_reused",
                        f"Idempotency-Key reused with a different request body (or method, or path): {key!r} "
                        "names the request it was first sent with; nothing was changed. Send a new key for a "
                        "new request")
    return first is not None  # (the same request sent again)


async def unbind_key(ctx: Context, key: str) -> None:
    """Undo the first binding of a key whose request was then refused: refused input leaves nothing behind
    (G6), and the key may be sent again with a corrected body."""
    await ctx.store.redis.delete(ctx.store.keys.api_idem(key))


def reference(key: str, sku: str | None = None) -> str:
    return fit(f"api:{key}" + (f":{sku}" if sku else ""), MAX_REF_BYTES, "api")
