// @ts-check
// webhook: POST a signed JSON payload. The JavaScript twin of
// plugins/webhook/rust; the contract (the same in Rust, Go and JavaScript;
// tests and users rely on it):
//
// - data `{"url": string, "payload": any}`;
// - POSTs `JSON.stringify(payload)` with `content-type: application/json`
//   and `x-bullpen-signature: sha256=<hex HMAC-SHA256 of the body>`, keyed
//   with the queue's variable `webhook_secret`;
// - 2xx: completed with `{"status": <code>, "body": <first 1024 bytes of the
//   response as text>}`;
// - 429 or 5xx: retry after the response's `Retry-After` seconds (else
//   1000 ms), reason `HTTP <code>`;
// - any other status: unrecoverable, reason `HTTP <code>`;
// - a network error or a denied host: retry, naming the error (the SDK's
//   fetch rejects with an HttpError, which escaping `process` retries);
// - `webhook_secret` not set: unrecoverable, saying so.
import { JobError, exportProcessor, Outcome, serdejson, variable } from 'bullpen-guest';

/** @param {import('bullpen-guest').Job} job */
async function handle(job) {
  const { url, payload } = parseData(job.data());
  const secret = variable('webhook_secret');
  const body = JSON.stringify(payload);
  const signature = `sha256=${await hmacSha256Hex(secret, body)}`;
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-bullpen-signature': signature },
    body,
  });
  const status = res.status;
  if (status >= 200 && status <= 299) {
    const head = new Uint8Array(await res.arrayBuffer()).subarray(0, 1024);
    return Outcome.complete({ status, body: new TextDecoder().decode(head) });
  }
  if (status === 429 || (status >= 500 && status <= 599)) {
    throw JobError.retryAfter(`HTTP ${status}`, retryAfterMs(res.headers.get('retry-after')));
  }
  throw JobError.unrecoverable(`HTTP ${status}`);
}

// The Rust plugin reads `{url: String, payload: RawValue}` with serde: the
// same checks, in serde's words.
/** @param {any} data @returns {{url: string, payload: any}} */
function parseData(data) {
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw JobError.unrecoverable(`unexpected JSON shape: invalid type: ${serdejson.describe(data)}, expected struct Data`);
  }
  if (!('url' in data)) throw JobError.unrecoverable('unexpected JSON shape: missing field `url`');
  if (typeof data.url !== 'string') {
    throw JobError.unrecoverable(`unexpected JSON shape: invalid type: ${serdejson.describe(data.url)}, expected a string`);
  }
  if (!('payload' in data)) throw JobError.unrecoverable('unexpected JSON shape: missing field `payload`');
  return { url: data.url, payload: data.payload };
}

// `Retry-After` in seconds (an HTTP date is not read, as in the Rust
// plugin), else 1000 ms; as a BigInt, since seconds * 1000 may pass 2^53.
/** @param {string | null} value @returns {bigint} */
function retryAfterMs(value) {
  const s = (value ?? '').trim();
  if (!/^\+?[0-9]+$/.test(s)) return 1000n;
  const secs = BigInt(s.replace(/^\+/, ''));
  const max = (1n << 64n) - 1n;
  if (secs > max) return 1000n; // not a u64: Rust's parse fails too
  const ms = secs * 1000n;
  return ms > max ? max : ms;
}

/** @param {string} key @param {string} message */
async function hmacSha256Hex(key, message) {
  const utf8 = new TextEncoder();
  // WebCrypto refuses an empty HMAC key; HMAC pads a key with zeros to the
  // block size (64 bytes), so 64 zero bytes is the same key.
  const raw = key === '' ? new Uint8Array(64) : utf8.encode(key);
  const k = await crypto.subtle.importKey('raw', raw, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', k, utf8.encode(message)));
  return Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('');
}

export const { process } = exportProcessor(handle);
