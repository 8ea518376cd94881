// Stand-ins for wasi:config/store@0.2.0-rc.1 and wasi:http@0.2.12, shaped as
// componentize-js 0.23 binds them (a refused call throws an Error whose
// `payload` is the WIT error; option = value or undefined; u64 = BigInt).
// `wasi.replies` says what the next request gets: `{ code }` (a wasi:http
// error-code variant) or `{ status, headers: [[k, v]], body: string }`;
// `wasi.sent` records what was sent.
export const wasi = { variables: {}, storeError: undefined, reply: undefined, sent: [], dropped: 0 };

function refuse(payload) {
  const e = new Error(`refused (see error.payload)`);
  Object.defineProperty(e, 'payload', { value: payload, enumerable: true });
  return e;
}

const dispose = Symbol.dispose || Symbol.for('dispose');
class Resource {
  [dispose]() {
    wasi.dropped += 1;
  }
}

// wasi:config/store
export function get(key) {
  if (wasi.storeError) throw refuse(wasi.storeError);
  return Object.hasOwn(wasi.variables, key) ? wasi.variables[key] : undefined;
}

// wasi:http/types
export class Fields extends Resource {
  constructor(entries = []) {
    super();
    this.list = entries;
  }
  append(name, value) {
    if (!(value instanceof Uint8Array)) throw new TypeError('field value must be a Uint8Array');
    this.list.push([name, value]);
  }
  entries() {
    return this.list;
  }
}

class Stream extends Resource {
  constructor(sink) {
    super();
    this.sink = sink;
  }
  blockingWriteAndFlush(bytes) {
    if (bytes.length > 4096) throw new Error('more than 4096 bytes in one blocking-write-and-flush');
    this.sink.push(...bytes);
  }
  blockingRead(len) {
    if (typeof len !== 'bigint') throw new TypeError('len must be a BigInt');
    if (this.sink.length === 0) throw refuse({ tag: 'closed' });
    return Uint8Array.from(this.sink.splice(0, Number(len)));
  }
}

export class OutgoingBody extends Resource {
  constructor() {
    super();
    this.bytes = [];
  }
  write() {
    return new Stream(this.bytes);
  }
  static finish(body) {
    body.finished = true;
  }
}

export class OutgoingRequest extends Resource {
  constructor(fields) {
    super();
    this.fields = fields;
    this.outBody = new OutgoingBody();
  }
  setMethod(m) {
    this.method = m;
  }
  setScheme(s) {
    this.scheme = s;
  }
  setAuthority(a) {
    this.authority = a;
  }
  setPathWithQuery(p) {
    this.path = p;
  }
  body() {
    return this.outBody;
  }
}

export function httpErrorCode() {
  return undefined;
}

// wasi:http/outgoing-handler
export function handle(req) {
  wasi.sent.push(req);
  const reply = wasi.reply ?? { status: 200, headers: [], body: '' };
  if (reply.code && reply.early) throw refuse(reply.code);
  const future = new (class extends Resource {
    subscribe() {
      return new (class extends Resource {
        block() {}
      })();
    }
    get() {
      if (!req.outBody.finished) throw new Error('the response was awaited before the body was finished');
      if (reply.code) return { tag: 'ok', val: { tag: 'err', val: reply.code } };
      const body = [...new TextEncoder().encode(reply.body)];
      const response = new (class extends Resource {
        status() {
          return reply.status;
        }
        headers() {
          return new Fields(reply.headers.map(([k, v]) => [k, new TextEncoder().encode(v)]));
        }
        consume() {
          return new (class extends Resource {
            stream() {
              return new Stream(body);
            }
          })();
        }
      })();
      return { tag: 'ok', val: { tag: 'ok', val: response } };
    }
  })();
  return future;
}
