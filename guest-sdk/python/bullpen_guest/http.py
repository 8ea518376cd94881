"""Outbound HTTP(S) from a processor, over `wasi:http/outgoing-handler`.

A blocking client: `process` is one synchronous call, so a request is a call
that returns the whole response. While it waits the host runs other attempts
(the wait is the host's, not a spinning guest). Redirects are not followed:
a 3xx is a response like any other::

    from bullpen_guest import http, variable

    res = http.post("https://api.example.com/v1/charges",
                    json={"amount": 100},
                    headers={"authorization": f"Bearer {variable('api_key')}"})
    if res.status >= 500:
        raise JobError.retry(f"HTTP {res.status}")

The host sends only to origins the queue's binding grants
(`--allow-outbound`); a refused request raises an `HttpError` whose text
names the host and the flag. Escaping `process`, it fails the attempt
retryably (the Rust SDK's `?` on an `HttpError`). The texts are the Rust
SDK's (guest-sdk/rust/src/http.rs).
"""

from __future__ import annotations

import json as _json
from typing import Any, Iterable, List, Mapping, Optional, Tuple, Union

__all__ = ["HttpError", "Response", "request", "get", "post", "put", "delete"]

Headers = Union[Mapping[str, Union[str, bytes]], Iterable[Tuple[str, Union[str, bytes]]], None]


class HttpError(Exception):
    """Why a request got no response: the host refused it or the network
    failed. Escaping `process`, it fails the attempt retryably with its text."""

    def __init__(self, message: str, origin: str = "", denied: bool = False, code: Optional[str] = None):
        super().__init__(message)
        #: The request's `scheme://host[:port]` (never its path or query).
        self.origin = origin
        #: True when the host refused it before it left: not in the queue's
        #: `--allow-outbound`, or the SSRF rule (a name resolving to a private address).
        self.denied = denied
        #: The wasi:http `error-code` case (e.g. 'HTTP-request-denied',
        #: 'connection-refused'), when there was one.
        self.code = code


class Response:
    """A response, body read whole (the host caps it: `--max-http-response-mb`)."""

    __slots__ = ("status", "headers", "body", "url")

    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes, url: str):
        #: The status code.
        self.status = status
        #: Header names (lowercase) and values, in the order received.
        self.headers = headers
        #: The body's bytes.
        self.body = body
        #: The URL requested.
        self.url = url

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status <= 299

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` (case-insensitive), or None."""
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def text(self) -> str:
        """The body as text (invalid UTF-8 replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; text that is not JSON raises an
        unrecoverable JobError ("invalid JSON: ...")."""
        from . import _loads

        return _loads(self.body.decode("utf-8", errors="replace"))

    def __repr__(self) -> str:
        return f"<Response {self.status} from {self.url}>"


def get(url: str, **kw: Any) -> Response:
    """`GET url`; keywords as `request`."""
    return request("GET", url, **kw)


def post(url: str, **kw: Any) -> Response:
    """`POST url`; keywords as `request`."""
    return request("POST", url, **kw)


def put(url: str, **kw: Any) -> Response:
    """`PUT url`; keywords as `request`."""
    return request("PUT", url, **kw)


def delete(url: str, **kw: Any) -> Response:
    """`DELETE url`; keywords as `request`."""
    return request("DELETE", url, **kw)


def request(
    method: str,
    url: str,
    *,
    headers: Headers = None,
    body: Union[bytes, str, None] = None,
    json: Any = None,
    timeout: Optional[float] = None,
) -> Response:
    """Send a request and read the whole response.

    `headers`: a mapping or (name, value) pairs (repeat a name for several
    values); `body`: bytes or text (UTF-8); `json`: a value sent as JSON with
    `content-type: application/json` (instead of `body`); `timeout`: seconds,
    a limit for connecting, for the first byte and between bytes (the host
    also clips every wait to the attempt's remaining time).
    """
    pairs: List[Tuple[str, bytes]] = []
    for name, value in _header_pairs(headers):
        pairs.append((str(name), value.encode("utf-8") if isinstance(value, str) else bytes(value)))
    if json is not None:
        if body is not None:
            raise ValueError("request: give body or json, not both")
        from . import _to_json

        body = _to_json(json)
        if not any(k.lower() == "content-type" for k, _ in pairs):
            pairs.append(("content-type", b"application/json"))
    data = b"" if body is None else (body.encode("utf-8") if isinstance(body, str) else bytes(body))
    return _send(method.upper(), url, pairs, data, timeout)


def _header_pairs(headers: Headers) -> Iterable[Tuple[str, Union[str, bytes]]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def _parse_url(url: str) -> Tuple[str, str, str]:
    """(scheme, authority, path_and_query) of an absolute http(s) URL."""
    if "://" not in url:
        raise HttpError(f"invalid URL {_quote(url)}: no scheme (https:// or http://)")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise HttpError(f"invalid URL {_quote(url)}: the scheme must be http or https")
    rest = rest.split("#", 1)[0]
    end = len(rest)
    for c in "/?":
        i = rest.find(c)
        if i != -1:
            end = min(end, i)
    authority, path = rest[:end], rest[end:]
    if not authority:
        raise HttpError(f"invalid URL {_quote(url)}: no host")
    if not path:
        path = "/"
    elif path.startswith("?"):
        path = "/" + path
    return scheme, authority, path


def _quote(s: str) -> str:
    return _json.dumps(s, ensure_ascii=False)


_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def _send(method: str, url: str, headers: List[Tuple[str, bytes]], body: bytes, timeout: Optional[float]) -> Response:
    from . import _host

    if _host._test_host is not None:
        return _host._test_host.http(method, url, headers, body, timeout)
    return _send_wasi(method, url, headers, body, timeout)


def _send_wasi(method: str, url: str, headers: List[Tuple[str, bytes]], body: bytes, timeout: Optional[float]) -> Response:
    from componentize_py_types import Err, Ok
    from wit_world.imports import outgoing_handler, streams
    from wit_world.imports import wasi_http_types as h

    scheme, authority, path = _parse_url(url)
    origin = f"{scheme}://{authority}"

    def fail(message: str) -> HttpError:
        return HttpError(message, origin)

    fields = h.Fields()
    for name, value in headers:
        try:
            fields.append(name, value)
        except Err as e:
            raise fail(f"header {_quote(name)} refused: {type(e.value).__name__.split('_')[-1]}") from None
    # The whole body is known: say its length (else it goes chunked, which
    # some servers refuse).
    has_length = any(k.lower() == "content-length" for k, _ in headers)
    if not has_length and (body or method in ("POST", "PUT", "PATCH")):
        fields.append("content-length", str(len(body)).encode())
    req = h.OutgoingRequest(fields)
    m = getattr(h, "Method_" + method.capitalize())() if method in _METHODS else h.Method_Other(method)
    try:
        req.set_method(m)
    except Err:
        raise fail("invalid method") from None
    try:
        req.set_scheme(h.Scheme_Https() if scheme == "https" else h.Scheme_Http())
        req.set_authority(authority)
        req.set_path_with_query(path)
    except Err:
        raise fail(f"invalid URL {_quote(url)}") from None
    options = None
    if timeout is not None:
        ns = max(0, min(int(timeout * 1e9), (1 << 64) - 1))
        options = h.RequestOptions()
        options.set_connect_timeout(ns)
        options.set_first_byte_timeout(ns)
        options.set_between_bytes_timeout(ns)
    out_body = req.body()
    # Send first, then write the body: the host streams it as written.
    try:
        pending = outgoing_handler.handle(req, options)
    except Err as e:
        raise _describe(origin, e.value) from None
    # A body that cannot be sent is usually a request that failed (refused,
    # denied): that error is the response's, so remember the write's and
    # report the response's first.
    write_error: Optional[HttpError] = None
    with out_body.write() as stream:
        for i in range(0, len(body), 4096):
            try:
                stream.blocking_write_and_flush(body[i : i + 4096])
            except Err as e:
                write_error = _stream_error(origin, e.value, "sending the body failed", h, streams)
                break
    if write_error is None:
        try:
            h.OutgoingBody.finish(out_body, None)
        except Err as e:
            write_error = _describe(origin, e.value)
    with pending:
        while True:
            got = pending.get()
            if got is not None:
                break
            with pending.subscribe() as ready:
                ready.block()
    if isinstance(got, Err) or isinstance(got.value, Err):
        if isinstance(got, Err):
            raise fail(f"request to {origin} failed: the response was already taken")
        raise _describe(origin, got.value.value)
    if write_error is not None:
        raise write_error
    with got.value.value as response:
        status = response.status()
        with response.headers() as hf:
            resp_headers = [(k.lower(), v.decode("utf-8", errors="replace")) for k, v in hf.entries()]
        chunks: List[bytes] = []
        with response.consume() as incoming:
            with incoming.stream() as stream:
                while True:
                    try:
                        chunks.append(stream.blocking_read(65536))
                    except Err as e:
                        if isinstance(e.value, streams.StreamError_Closed):
                            break
                        raise _stream_error(origin, e.value, f"reading the response from {origin} failed", h, streams) from None
    return Response(status, resp_headers, b"".join(chunks), url)


def _stream_error(origin: str, err: Any, what: str, h: Any, streams: Any) -> HttpError:
    if isinstance(err, streams.StreamError_Closed):
        return HttpError(f"{what}: the connection closed", origin)
    code = h.http_error_code(err.value)
    if code is not None:
        return _describe(origin, code)
    # wasmtime-wasi-http 48 reports body errors as its own error type,
    # which http-error-code does not recognise: the text is all there is.
    text = err.value.to_debug_string()
    hint = " (--max-http-response-mb)" if "body size exceeds limit" in text else ""
    return HttpError(f"{what}: {text}{hint}", origin)


# The WIT case names of wasi:http's error-code, by the generated class's suffix.
def _case(code: Any) -> str:
    name = type(code).__name__.split("_", 1)[-1]
    special = {
        "HttpRequestDenied": "HTTP-request-denied",
        "DestinationIpProhibited": "destination-IP-prohibited",
        "DnsError": "DNS-error",
        "DnsTimeout": "DNS-timeout",
        "TlsCertificateError": "TLS-certificate-error",
        "TlsProtocolError": "TLS-protocol-error",
        "TlsAlertReceived": "TLS-alert-received",
        "HttpResponseBodySize": "HTTP-response-body-size",
        "HttpResponseTimeout": "HTTP-response-timeout",
    }
    if name in special:
        return special[name]
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("-")
        out.append(ch.lower())
    return "".join(out)


def _rust_name(code: Any) -> str:
    # Rust's Debug name of the case (`TlsCertificateError`), as the Rust SDK prints it.
    return type(code).__name__.split("_", 1)[-1]


def _describe(origin: str, code: Any) -> HttpError:
    """The text for a wasi:http error code: what happened, to which origin,
    and for a refusal, the flag that grants it."""
    name = _rust_name(code)
    case = _case(code)
    val = getattr(code, "value", None)

    def fail(message: str, denied: bool = False) -> HttpError:
        return HttpError(message, origin, denied, case)

    if name == "HttpRequestDenied":
        return fail(
            f"request to {origin} denied: not in this queue's allow-list "
            f"(grant it with --allow-outbound {origin}, or allowed_outbound_hosts in bullpen.toml)",
            True,
        )
    if name == "DestinationIpProhibited":
        return fail(
            f"request to {origin} refused: the host resolves to a loopback, link-local, private or "
            "unspecified address; grant that IP itself with --allow-outbound to reach it",
            True,
        )
    if name == "ConnectionRefused":
        return fail(f"request to {origin} failed: connection refused")
    if name == "ConnectionTimeout":
        return fail(f"request to {origin} failed: connect timed out")
    if name in ("ConnectionReadTimeout", "HttpResponseTimeout"):
        return fail(f"request to {origin} failed: timed out waiting for the response")
    if name == "ConnectionLimitReached":
        return fail(f"request to {origin} refused: too many requests in flight in this attempt (--max-http-in-flight)")
    if name == "HttpResponseBodySize":
        n = "over the limit" if val is None else str(val)
        return fail(f"response from {origin} is too large ({n} bytes read; --max-http-response-mb)")
    if name in ("TlsCertificateError", "TlsProtocolError", "TlsAlertReceived"):
        return fail(f"request to {origin} failed: TLS error ({name}); a private CA needs --http-ca")
    if name == "DnsError":
        return fail(f"request to {origin} failed: DNS error ({(val.rcode if val else None) or ''})")
    if name == "InternalError" and isinstance(val, str):
        return fail(f"request to {origin} failed: {val}")
    return fail(f"request to {origin} failed: {name}")
