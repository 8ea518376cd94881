// The webhook scenario's receiver, kept cheap so that it is not what is
// measured: a bare HTTP/1.1 server on `net` (no `http` module objects per
// request), keep-alive, request bodies by content-length or chunked. It
// answers POST /hook with 200 `ok` after reading the body and checking its
// signature (x-bullpen-signature: sha256=<hex HMAC-SHA256 of the body, key
// <secret>>) and content-type, as the webhook contract says; GET /stats
// answers {"ok", "bad", "connections"} (bad: a request that was not a
// rightly signed POST /hook; answered 200 too, so it shows up here rather
// than as a retried job).
//   node bench/node/hook-server.js <secret>    # prints its port on stdout
// bench/run.py measures its CPU apart from the workers'.
'use strict';
const net = require('net');
const crypto = require('crypto');
const [secret] = process.argv.slice(2);
let ok = 0, bad = 0, connections = 0;
const OK = Buffer.from('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok');

// One request from `buf` at `at`: {end, method, path, headers, body} or null (incomplete).
function parse(buf, at) {
  const head = buf.indexOf('\r\n\r\n', at, 'latin1');
  if (head < 0) return null;
  const lines = buf.toString('latin1', at, head).split('\r\n');
  const [method, path] = lines[0].split(' ');
  const headers = {};
  for (let i = 1; i < lines.length; i++) {
    const c = lines[i].indexOf(':');
    headers[lines[i].slice(0, c).trim().toLowerCase()] = lines[i].slice(c + 1).trim();
  }
  let p = head + 4;
  if (/chunked/i.test(headers['transfer-encoding'] || '')) {
    const parts = [];
    for (;;) {
      const eol = buf.indexOf('\r\n', p, 'latin1');
      if (eol < 0) return null;
      const size = parseInt(buf.toString('latin1', p, eol), 16);
      if (buf.length < eol + 2 + size + 2) return null;
      parts.push(buf.subarray(eol + 2, eol + 2 + size));
      p = eol + 2 + size + 2;
      if (size === 0) {
        // No trailers from these clients: the empty line after the last chunk ends it.
        return { end: p, method, path, headers, body: Buffer.concat(parts) };
      }
    }
  }
  const len = Number(headers['content-length'] || 0);
  if (buf.length < p + len) return null;
  return { end: p + len, method, path, headers, body: buf.subarray(p, p + len) };
}

const server = net.createServer((sock) => {
  connections++;
  sock.setNoDelay(true);
  let buf = Buffer.alloc(0);
  sock.on('data', (d) => {
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    let at = 0, r;
    while ((r = parse(buf, at))) {
      at = r.end;
      if (r.method === 'GET' && r.path === '/stats') {
        const body = JSON.stringify({ ok, bad, connections });
        sock.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
        return;
      }
      const want = 'sha256=' + crypto.createHmac('sha256', secret).update(r.body).digest('hex');
      if (r.method === 'POST' && r.path === '/hook' && r.headers['x-bullpen-signature'] === want
          && r.headers['content-type'] === 'application/json') ok++; else bad++;
      sock.write(OK);
    }
    buf = at >= buf.length ? Buffer.alloc(0) : buf.subarray(at);
  });
  sock.on('error', () => {});
});
server.listen({ port: 0, host: '127.0.0.1', backlog: 1024 }, () => process.stdout.write(`${server.address().port}\n`));
process.on('SIGTERM', () => process.exit(0));
