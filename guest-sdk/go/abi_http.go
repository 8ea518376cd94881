package guest

// The canonical ABI of the wasi:http, wasi:io and wasi:config functions the
// SDK imports (Transport, Variable), by hand like abi.go: plain Go over an
// arena, unit-tested on any platform (abi_http_test.go). The imports
// themselves are in http_wasip1.go.
//
// Layouts (little-endian, offsets in bytes; a handle is a u32):
//
//	error-code (size 32, align 8): tag 0 (u8, errorCodeNames); payload 8:
//	  DNS-error: rcode option<string> 8 (tag; ptr 12, len 16),
//	             info-code option<u16> 20 (tag; value 22)
//	  TLS-alert-received: alert-id option<u8> 8 (tag; value 9),
//	             alert-message option<string> 12 (tag; ptr 16, len 20)
//	  HTTP-request-body-size, HTTP-response-body-size: option<u64> 8
//	             (tag; value 16)
//	  HTTP-response-transfer-coding, -content-coding, internal-error:
//	             option<string> 8 (tag; ptr 12, len 16)
//	  (the other payloads are sizes and field names: not read)
//	result<handle, error-code> (handle, size 40): tag 0; handle 8 | error-code 8
//	result<_, error-code> (outgoing-body.finish, size 40): tag 0; error-code 8
//	option<error-code> (http-error-code, size 40): tag 0; error-code 8
//	option<result<result<incoming-response, error-code>>>
//	  (future-incoming-response.get, size 56): option tag 0, result tag 8
//	  (1: already taken), inner tag 16; response handle 24 | error-code 24
//	result<handle> (body, write, consume, stream; size 8): tag 0, handle 4
//	result<_, header-error> (fields.append, size 2): tag 0, header-error 1
//	list<tuple<string, list<u8>>> (fields.entries, size 8): ptr 0, len 4;
//	  elements 16 bytes: name 0, value 8
//	result<list<u8>, stream-error> (input-stream.read, size 12): tag 0;
//	  ok: list ptr 4, len 8; err: stream-error tag 4 (0 last-operation-
//	  failed, 1 closed), error handle 8
//	result<_, stream-error> (output-stream.blocking-write-and-flush, size
//	  12): tag 0; stream-error 4 as above
//	string (error.to-debug-string, size 8): ptr 0, len 4
//	list<u32> (poll, size 8): ptr 0, len 4
//	result<option<string>, error> (wasi:config/store.get, size 16): tag 0;
//	  ok: option tag 4, string 8; err: error tag 4 (0 upstream, 1 io),
//	  string 8

import "fmt"

// Sizes and alignments of the return areas above.
const (
	errorCodeSize       = 32
	handleResultSize    = 40 // result<handle, error-code>, result<_, error-code>, option<error-code>
	futureGetSize       = 56
	ownResultSize       = 8
	headerResultSize    = 2
	listSize            = 8
	streamResultSize    = 12
	configGetResultSize = 16
)

// errorCodeNames are wasi:http's error-code cases, in order.
var errorCodeNames = [...]string{
	"DNS-timeout", "DNS-error", "destination-not-found", "destination-unavailable",
	"destination-IP-prohibited", "destination-IP-unroutable", "connection-refused",
	"connection-terminated", "connection-timeout", "connection-read-timeout",
	"connection-write-timeout", "connection-limit-reached", "TLS-protocol-error",
	"TLS-certificate-error", "TLS-alert-received", "HTTP-request-denied",
	"HTTP-request-length-required", "HTTP-request-body-size", "HTTP-request-method-invalid",
	"HTTP-request-URI-invalid", "HTTP-request-URI-too-long", "HTTP-request-header-section-size",
	"HTTP-request-header-size", "HTTP-request-trailer-section-size", "HTTP-request-trailer-size",
	"HTTP-response-incomplete", "HTTP-response-header-section-size", "HTTP-response-header-size",
	"HTTP-response-body-size", "HTTP-response-trailer-section-size", "HTTP-response-trailer-size",
	"HTTP-response-transfer-coding", "HTTP-response-content-coding", "HTTP-response-timeout",
	"HTTP-upgrade-failed", "HTTP-protocol-error", "loop-detected", "configuration-error",
	"internal-error",
}

// The error-code cases the SDK describes by name.
const (
	ecDNSError                = 1
	ecDestinationIPProhibited = 4
	ecConnectionRefused       = 6
	ecConnectionTimeout       = 8
	ecConnectionReadTimeout   = 9
	ecConnectionLimitReached  = 11
	ecTLSProtocolError        = 12
	ecTLSCertificateError     = 13
	ecTLSAlertReceived        = 14
	ecHTTPRequestDenied       = 15
	ecHTTPRequestBodySize     = 17
	ecHTTPResponseBodySize    = 28
	ecTransferCoding          = 31
	ecContentCoding           = 32
	ecHTTPResponseTimeout     = 33
	ecInternalError           = 38
)

// errorCode is a lifted wasi:http error-code: its case and the payload
// parts the SDK's texts use.
type errorCode struct {
	tag uint8
	// text: DNS-error's rcode, TLS-alert-received's message, the codings,
	// internal-error's message (hasText when the option is some).
	text    string
	hasText bool
	// size: the body-size cases' option<u64>.
	size    uint64
	hasSize bool
}

func (e errorCode) name() string {
	if int(e.tag) < len(errorCodeNames) {
		return errorCodeNames[e.tag]
	}
	return fmt.Sprintf("error-code %d", e.tag)
}

// optString lifts an option<string> whose tag is at off (payload off+4).
func (r *reader) optString(off uint32) (string, bool) {
	switch tag := r.u8(off); tag {
	case 0:
		return "", false
	case 1:
		return r.str(off + 4), true
	default:
		r.fail("option", tag)
		return "", false
	}
}

// errorCode lifts the error-code at off.
func (r *reader) errorCode(off uint32) errorCode {
	e := errorCode{tag: r.u8(off)}
	if r.err != nil {
		return e
	}
	switch e.tag {
	case ecDNSError, ecTransferCoding, ecContentCoding, ecInternalError:
		e.text, e.hasText = r.optString(off + 8)
	case ecTLSAlertReceived:
		e.text, e.hasText = r.optString(off + 12)
	case ecHTTPRequestBodySize, ecHTTPResponseBodySize:
		switch tag := r.u8(off + 8); tag {
		case 0:
		case 1:
			e.size, e.hasSize = r.u64(off+16), true
		default:
			r.fail("option<u64>", tag)
		}
	default:
		if int(e.tag) >= len(errorCodeNames) {
			r.fail("error-code", e.tag)
		}
	}
	return e
}

// liftHandleResult decodes result<handle, error-code> (outgoing-handler.
// handle) or, with a handle of 0, result<_, error-code> (outgoing-body.
// finish). A nil *errorCode is ok.
func liftHandleResult(a *arena, ret uint32) (uint32, *errorCode, error) {
	r := a.reader(ret, handleResultSize)
	var h uint32
	var ec *errorCode
	switch tag := r.u8(0); tag {
	case 0:
		h = r.u32(8)
	case 1:
		e := r.errorCode(8)
		ec = &e
	default:
		r.fail("result", tag)
	}
	return h, ec, r.err
}

// liftOptionErrorCode decodes option<error-code> (http-error-code).
func liftOptionErrorCode(a *arena, ret uint32) (*errorCode, error) {
	r := a.reader(ret, handleResultSize)
	var ec *errorCode
	switch tag := r.u8(0); tag {
	case 0:
	case 1:
		e := r.errorCode(8)
		ec = &e
	default:
		r.fail("option", tag)
	}
	return ec, r.err
}

// futureGet is future-incoming-response.get's answer.
type futureGet struct {
	ready    bool // the option was some
	taken    bool // result err: the response was already taken
	response uint32
	failed   *errorCode
}

// liftFutureGet decodes future-incoming-response.get's return area.
func liftFutureGet(a *arena, ret uint32) (futureGet, error) {
	r := a.reader(ret, futureGetSize)
	var g futureGet
	switch tag := r.u8(0); tag {
	case 0:
		return g, r.err
	case 1:
		g.ready = true
	default:
		r.fail("option", tag)
	}
	switch tag := r.u8(8); tag {
	case 0:
	case 1:
		g.taken = true
		return g, r.err
	default:
		r.fail("result", tag)
	}
	switch tag := r.u8(16); tag {
	case 0:
		g.response = r.u32(24)
	case 1:
		e := r.errorCode(24)
		g.failed = &e
	default:
		r.fail("result", tag)
	}
	return g, r.err
}

// liftOwnResult decodes result<handle> (size 8): the handle, or false for
// the unit error.
func liftOwnResult(a *arena, ret uint32) (uint32, bool, error) {
	r := a.reader(ret, ownResultSize)
	switch tag := r.u8(0); tag {
	case 0:
		return r.u32(4), true, r.err
	case 1:
		return 0, false, r.err
	default:
		r.fail("result", tag)
		return 0, false, r.err
	}
}

// headerErrorNames are header-error's cases.
var headerErrorNames = [...]string{"invalid-syntax", "forbidden", "immutable"}

// liftHeaderResult decodes result<_, header-error>: "" when ok, else the
// header-error's name.
func liftHeaderResult(a *arena, ret uint32) (string, error) {
	r := a.reader(ret, headerResultSize)
	switch tag := r.u8(0); tag {
	case 0:
		return "", r.err
	case 1:
		e := r.u8(1)
		if int(e) >= len(headerErrorNames) {
			r.fail("header-error", e)
			return "", r.err
		}
		return headerErrorNames[e], r.err
	default:
		r.fail("result", tag)
		return "", r.err
	}
}

// rawField is one header: name and value, copied out of the arena.
type rawField struct {
	name  string
	value string
}

// liftFieldsEntries decodes list<tuple<string, list<u8>>>.
func liftFieldsEntries(a *arena, ret uint32) ([]rawField, error) {
	r := a.reader(ret, listSize)
	ptr, n := r.u32(0), r.u32(4)
	if r.err != nil || n == 0 {
		return nil, r.err
	}
	if uint64(n)*16 > 1<<32-1 {
		return nil, fmt.Errorf("canonical ABI: list of %d headers is too long", n)
	}
	items := a.reader(ptr, n*16)
	out := make([]rawField, n)
	for i := uint32(0); i < n; i++ {
		// A list<u8> lifts as a string does: (ptr, len) of bytes.
		out[i] = rawField{name: items.str(i * 16), value: items.str(i*16 + 8)}
	}
	return out, items.err
}

// streamResult is the answer of input-stream.read (data) or output-
// stream.blocking-write-and-flush.
type streamResult struct {
	n      int    // bytes read (copied into the caller's buffer)
	closed bool   // stream-error closed: the end of the stream
	failed uint32 // stream-error last-operation-failed: an own<error> handle (0: none)
}

// liftStreamRead decodes result<list<u8>, stream-error>, copying the bytes
// into p (the host returns at most what was asked for).
func liftStreamRead(a *arena, ret uint32, p []byte) (streamResult, error) {
	r := a.reader(ret, streamResultSize)
	var s streamResult
	switch tag := r.u8(0); tag {
	case 0:
		ptr, n := r.u32(4), r.u32(8)
		if r.err == nil && n > 0 {
			if int(n) > len(p) {
				return s, fmt.Errorf("canonical ABI: the host returned %d bytes for a read of %d", n, len(p))
			}
			b, err := a.load(ptr, n)
			if err != nil {
				return s, err
			}
			s.n = copy(p, b)
		}
	case 1:
		s = r.streamError(4)
	default:
		r.fail("result", tag)
	}
	return s, r.err
}

// liftStreamUnit decodes result<_, stream-error>.
func liftStreamUnit(a *arena, ret uint32) (streamResult, error) {
	r := a.reader(ret, streamResultSize)
	var s streamResult
	switch tag := r.u8(0); tag {
	case 0:
	case 1:
		s = r.streamError(4)
	default:
		r.fail("result", tag)
	}
	return s, r.err
}

func (r *reader) streamError(off uint32) streamResult {
	switch tag := r.u8(off); tag {
	case 0:
		return streamResult{failed: r.u32(off + 4)}
	case 1:
		return streamResult{closed: true}
	default:
		r.fail("stream-error", tag)
		return streamResult{}
	}
}

// liftString decodes a string return area (error.to-debug-string).
func liftString(a *arena, ret uint32) (string, error) {
	r := a.reader(ret, listSize)
	s := r.str(0)
	return s, r.err
}

// liftU32List decodes list<u32> (poll's ready indexes).
func liftU32List(a *arena, ret uint32) ([]uint32, error) {
	r := a.reader(ret, listSize)
	ptr, n := r.u32(0), r.u32(4)
	if r.err != nil || n == 0 {
		return nil, r.err
	}
	if uint64(n)*4 > 1<<32-1 {
		return nil, fmt.Errorf("canonical ABI: list of %d indexes is too long", n)
	}
	items := a.reader(ptr, n*4)
	out := make([]uint32, n)
	for i := range out {
		out[i] = items.u32(uint32(i) * 4)
	}
	return out, items.err
}

// configGet is wasi:config/store.get's answer.
type configGet struct {
	value   string
	found   bool
	failed  bool   // the store's error variant
	message string // its text (upstream or io)
}

// liftConfigGet decodes result<option<string>, error>.
func liftConfigGet(a *arena, ret uint32) (configGet, error) {
	r := a.reader(ret, configGetResultSize)
	var g configGet
	switch tag := r.u8(0); tag {
	case 0:
		g.value, g.found = r.optString(4)
	case 1:
		switch e := r.u8(4); e {
		case 0, 1:
			g.failed, g.message = true, r.str(8)
		default:
			r.fail("config error", e)
		}
	default:
		r.fail("result", tag)
	}
	return g, r.err
}
