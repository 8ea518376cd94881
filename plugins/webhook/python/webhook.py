"""webhook: POST a signed JSON payload. The Python twin of
plugins/webhook/rust; the contract (the same in every language; tests and
users rely on it):

- data `{"url": string, "payload": any}`;
- POSTs `JSON.stringify(payload)` with `content-type: application/json`
  and `x-bullpen-signature: sha256=<hex HMAC-SHA256 of the body>`, keyed
  with the queue's variable `webhook_secret`;
- 2xx: completed with `{"status": <code>, "body": <first 1024 bytes of the
  response as text>}`;
- 429 or 5xx: retry after the response's `Retry-After` seconds (else
  1000 ms), reason `HTTP <code>`;
- any other status: unrecoverable, reason `HTTP <code>`;
- a network error or a denied host: retry, naming the error (the SDK's
  request raises an HttpError, which escaping `process` retries);
- `webhook_secret` not set: unrecoverable, saying so.
"""

import hashlib
import hmac
import json
import re

from bullpen_guest import Job, JobError, Outcome, export_processor, http, variable
from bullpen_guest.serdejson import describe

U64_MAX = (1 << 64) - 1


def process(job: Job) -> Outcome:
    url, payload = parse_data(job.data())
    secret = variable("webhook_secret")
    # JSON.stringify(payload): compact, the producer's key order.
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    mac = hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    res = http.post(
        url,
        headers={"content-type": "application/json", "x-bullpen-signature": f"sha256={mac}"},
        body=body,
    )
    status = res.status
    if 200 <= status <= 299:
        return Outcome.complete({"status": status, "body": res.body[:1024].decode("utf-8", errors="replace")})
    if status == 429 or 500 <= status <= 599:
        raise JobError.retry_after(f"HTTP {status}", retry_after_ms(res.header("retry-after")))
    raise JobError.unrecoverable(f"HTTP {status}")


export_processor(process)


def retry_after_ms(value):
    """`Retry-After` in seconds (an HTTP date is not read, as in the Rust
    plugin), else 1000 ms; saturating at u64's maximum."""
    s = (value or "").strip()
    if not re.fullmatch(r"\+?[0-9]+", s):
        return 1000
    secs = int(s)
    if secs > U64_MAX:
        return 1000  # not a u64: Rust's parse fails too
    return min(secs * 1000, U64_MAX)


def parse_data(data):
    """The Rust plugin reads `{url: String, payload: RawValue}` with serde:
    the same checks, in serde's words."""
    if not isinstance(data, dict):
        raise invalid(f"invalid type: {describe(data)}, expected struct Data")
    if "url" not in data:
        raise invalid("missing field `url`")
    if not isinstance(data["url"], str):
        raise invalid(f"invalid type: {describe(data['url'])}, expected a string")
    if "payload" not in data:
        raise invalid("missing field `payload`")
    return data["url"], data["payload"]


def invalid(msg):
    return JobError.unrecoverable(f"unexpected JSON shape: {msg}")
