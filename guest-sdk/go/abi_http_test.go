package guest

import (
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

// area returns a zeroed return area of size bytes aligned to align, filled
// by fill as the host would lower a result into it.
func area(t *testing.T, a *arena, size, align uint32, fill func(b []byte)) uint32 {
	t.Helper()
	ptr, b := newBlock(t, a, size, align)
	clear(b)
	fill(b)
	return ptr
}

var le = binary.LittleEndian

func TestLiftErrorCode(t *testing.T) {
	a := testArena()
	cases := []struct {
		name string
		fill func(b []byte) // the error-code at b[0:32]
		want errorCode
	}{
		{"denied", func(b []byte) { b[0] = 15 }, errorCode{tag: ecHTTPRequestDenied}},
		{"refused", func(b []byte) { b[0] = 6 }, errorCode{tag: ecConnectionRefused}},
		{"DNS-error rcode", func(b []byte) { b[0] = 1; b[8] = 1; put(t, a, b, 12, "NXDOMAIN"); b[20] = 1; le.PutUint16(b[22:], 3) },
			errorCode{tag: ecDNSError, text: "NXDOMAIN", hasText: true}},
		{"DNS-error none", func(b []byte) { b[0] = 1 }, errorCode{tag: ecDNSError}},
		{"TLS alert", func(b []byte) { b[0] = 14; b[8] = 1; b[9] = 42; b[12] = 1; put(t, a, b, 16, "bad cert") },
			errorCode{tag: ecTLSAlertReceived, text: "bad cert", hasText: true}},
		{"body size", func(b []byte) { b[0] = 28; b[8] = 1; le.PutUint64(b[16:], 1<<20+1) },
			errorCode{tag: ecHTTPResponseBodySize, size: 1<<20 + 1, hasSize: true}},
		{"body size unknown", func(b []byte) { b[0] = 28 }, errorCode{tag: ecHTTPResponseBodySize}},
		{"internal", func(b []byte) { b[0] = 38; b[8] = 1; put(t, a, b, 12, "boom") },
			errorCode{tag: ecInternalError, text: "boom", hasText: true}},
	}
	for _, c := range cases {
		// As outgoing-handler.handle's err: result tag 1, error-code at 8.
		ret := area(t, a, handleResultSize, 8, func(b []byte) { b[0] = 1; c.fill(b[8:]) })
		h, ec, err := liftHandleResult(a, ret)
		if err != nil || h != 0 || ec == nil || !reflect.DeepEqual(*ec, c.want) {
			t.Errorf("%s: got %v %+v %v, want %+v", c.name, h, ec, err, c.want)
		}
	}
	ret := area(t, a, handleResultSize, 8, func(b []byte) { b[0] = 1; b[8] = 39 })
	if _, _, err := liftHandleResult(a, ret); err == nil {
		t.Error("error-code 39 accepted")
	}
	ret = area(t, a, handleResultSize, 8, func(b []byte) { b[0] = 1; b[8] = 38; b[16] = 2 })
	if _, _, err := liftHandleResult(a, ret); err == nil {
		t.Error("option tag 2 accepted")
	}
	ret = area(t, a, handleResultSize, 8, func(b []byte) { le.PutUint32(b[8:], 7) })
	if h, ec, err := liftHandleResult(a, ret); h != 7 || ec != nil || err != nil {
		t.Errorf("ok handle: %v %v %v", h, ec, err)
	}
	ret = area(t, a, handleResultSize, 8, func(b []byte) { b[0] = 1; b[8] = 33 })
	if ec, err := liftOptionErrorCode(a, ret); err != nil || ec == nil || ec.name() != "HTTP-response-timeout" {
		t.Errorf("option<error-code>: %+v %v", ec, err)
	}
	ret = area(t, a, handleResultSize, 8, func(b []byte) {})
	if ec, err := liftOptionErrorCode(a, ret); err != nil || ec != nil {
		t.Errorf("option<error-code> none: %+v %v", ec, err)
	}
}

func TestLiftFutureGet(t *testing.T) {
	a := testArena()
	get := func(fill func(b []byte)) futureGet {
		t.Helper()
		g, err := liftFutureGet(a, area(t, a, futureGetSize, 8, fill))
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	if g := get(func(b []byte) {}); g != (futureGet{}) {
		t.Errorf("not ready: %+v", g)
	}
	if g := get(func(b []byte) { b[0] = 1; le.PutUint32(b[24:], 9) }); g != (futureGet{ready: true, response: 9}) {
		t.Errorf("response: %+v", g)
	}
	if g := get(func(b []byte) { b[0] = 1; b[8] = 1 }); g != (futureGet{ready: true, taken: true}) {
		t.Errorf("taken: %+v", g)
	}
	g := get(func(b []byte) { b[0] = 1; b[16] = 1; b[24] = 15 })
	if !g.ready || g.failed == nil || g.failed.tag != ecHTTPRequestDenied {
		t.Errorf("denied: %+v", g)
	}
	if _, err := liftFutureGet(a, area(t, a, futureGetSize, 8, func(b []byte) { b[0] = 3 })); err == nil {
		t.Error("option tag 3 accepted")
	}
}

func TestLiftSmallResults(t *testing.T) {
	a := testArena()
	if h, ok, err := liftOwnResult(a, area(t, a, ownResultSize, 4, func(b []byte) { le.PutUint32(b[4:], 5) })); h != 5 || !ok || err != nil {
		t.Errorf("result<handle> ok: %v %v %v", h, ok, err)
	}
	if _, ok, err := liftOwnResult(a, area(t, a, ownResultSize, 4, func(b []byte) { b[0] = 1 })); ok || err != nil {
		t.Errorf("result<handle> err: %v %v", ok, err)
	}
	for i, want := range []string{"", "forbidden"} {
		got, err := liftHeaderResult(a, area(t, a, headerResultSize, 1, func(b []byte) { b[0] = uint8(i); b[1] = 1 }))
		if got != want || err != nil {
			t.Errorf("header result %d: %q %v", i, got, err)
		}
	}
	entries, err := liftFieldsEntries(a, area(t, a, listSize, 4, func(b []byte) {
		lp, lb := newBlock(t, a, 32, 4)
		put(t, a, lb, 0, "retry-after")
		put(t, a, lb, 8, "2")
		put(t, a, lb, 16, "content-type")
		put(t, a, lb, 24, "text/plain")
		le.PutUint32(b[0:], lp)
		le.PutUint32(b[4:], 2)
	}))
	if want := []rawField{{"retry-after", "2"}, {"content-type", "text/plain"}}; err != nil || !reflect.DeepEqual(entries, want) {
		t.Errorf("fields.entries: %v %v", entries, err)
	}
	s, err := liftString(a, area(t, a, listSize, 4, func(b []byte) { put(t, a, b, 0, "body size exceeds limit") }))
	if s != "body size exceeds limit" || err != nil {
		t.Errorf("to-debug-string: %q %v", s, err)
	}
	ready, err := liftU32List(a, area(t, a, listSize, 4, func(b []byte) {
		lp, lb := newBlock(t, a, 8, 4)
		le.PutUint32(lb[0:], 1)
		le.PutUint32(lb[4:], 0)
		le.PutUint32(b[0:], lp)
		le.PutUint32(b[4:], 2)
	}))
	if !reflect.DeepEqual(ready, []uint32{1, 0}) || err != nil {
		t.Errorf("poll: %v %v", ready, err)
	}
}

func TestLiftStreams(t *testing.T) {
	a := testArena()
	p := make([]byte, 8)
	res, err := liftStreamRead(a, area(t, a, streamResultSize, 4, func(b []byte) { put(t, a, b, 4, "chunk") }), p)
	if res != (streamResult{n: 5}) || err != nil || string(p[:5]) != "chunk" {
		t.Errorf("read: %+v %v %q", res, err, p)
	}
	res, err = liftStreamRead(a, area(t, a, streamResultSize, 4, func(b []byte) { b[0] = 1; b[4] = 1 }), p)
	if res != (streamResult{closed: true}) || err != nil {
		t.Errorf("closed: %+v %v", res, err)
	}
	res, err = liftStreamRead(a, area(t, a, streamResultSize, 4, func(b []byte) { b[0] = 1; le.PutUint32(b[8:], 4) }), p)
	if res != (streamResult{failed: 4}) || err != nil {
		t.Errorf("failed: %+v %v", res, err)
	}
	if _, err := liftStreamRead(a, area(t, a, streamResultSize, 4, func(b []byte) { put(t, a, b, 4, "more than eight") }), p); err == nil {
		t.Error("a read longer than asked accepted")
	}
	res, err = liftStreamUnit(a, area(t, a, streamResultSize, 4, func(b []byte) {}))
	if res != (streamResult{}) || err != nil {
		t.Errorf("write ok: %+v %v", res, err)
	}
	res, err = liftStreamUnit(a, area(t, a, streamResultSize, 4, func(b []byte) { b[0] = 1; b[4] = 1 }))
	if res != (streamResult{closed: true}) || err != nil {
		t.Errorf("write closed: %+v %v", res, err)
	}
}

func TestLiftConfigGet(t *testing.T) {
	a := testArena()
	g, err := liftConfigGet(a, area(t, a, configGetResultSize, 4, func(b []byte) { b[4] = 1; put(t, a, b, 8, "s3cr3t") }))
	if g != (configGet{value: "s3cr3t", found: true}) || err != nil {
		t.Errorf("some: %+v %v", g, err)
	}
	g, err = liftConfigGet(a, area(t, a, configGetResultSize, 4, func(b []byte) {}))
	if g != (configGet{}) || err != nil {
		t.Errorf("none: %+v %v", g, err)
	}
	g, err = liftConfigGet(a, area(t, a, configGetResultSize, 4, func(b []byte) { b[0] = 1; b[4] = 1; put(t, a, b, 8, "disk") }))
	if g != (configGet{failed: true, message: "disk"}) || err != nil {
		t.Errorf("err: %+v %v", g, err)
	}
}

// The texts are the Rust SDK's (guest-sdk/rust/src/http.rs, lib.rs).
func TestErrorTexts(t *testing.T) {
	o := "http://127.0.0.1:8080"
	e := describe(o, errorCode{tag: ecHTTPRequestDenied})
	if want := "request to http://127.0.0.1:8080 denied: not in this queue's allow-list (grant it with --allow-outbound http://127.0.0.1:8080, or allowed_outbound_hosts in bullpen.toml)"; e.Error() != want || !e.Denied || e.Origin != o {
		t.Errorf("denied: %q", e.Error())
	}
	e = describe(o, errorCode{tag: ecDestinationIPProhibited})
	if !e.Denied || !strings.Contains(e.Error(), "resolves to a loopback") {
		t.Errorf("SSRF: %q", e.Error())
	}
	for code, want := range map[errorCode]string{
		{tag: ecConnectionRefused}:                            "request to http://127.0.0.1:8080 failed: connection refused",
		{tag: ecHTTPResponseTimeout}:                          "request to http://127.0.0.1:8080 failed: timed out waiting for the response",
		{tag: ecHTTPResponseBodySize, size: 9, hasSize: true}: "response from http://127.0.0.1:8080 is too large (9 bytes read; --max-http-response-mb)",
		{tag: ecTLSCertificateError}:                          "request to http://127.0.0.1:8080 failed: TLS error (TLS-certificate-error); a private CA needs --http-ca",
		{tag: ecInternalError, text: "boom", hasText: true}:   "request to http://127.0.0.1:8080 failed: boom",
		{tag: 7}: "request to http://127.0.0.1:8080 failed: connection-terminated",
	} {
		if e := describe(o, code); e.Error() != want || e.Denied {
			t.Errorf("%+v: %q", code, e.Error())
		}
	}
	if e := bodyReadError(o, "body size exceeds limit"); !strings.HasSuffix(e.Error(), "(--max-http-response-mb)") {
		t.Errorf("body cap: %q", e.Error())
	}

	v, err := variableFrom("k", configGet{value: "v", found: true}, nil)
	if v != "v" || err != nil {
		t.Errorf("variable: %q %v", v, err)
	}
	_, err = variableFrom("api_key", configGet{}, nil)
	if f, ok := err.(*JobError); !ok || !f.IsUnrecoverable() || f.Error() != "variable `api_key` is not set for this queue (set it with --var api_key=... / --var-env api_key=ENVNAME, or in [queues.variables] of bullpen.toml)" {
		t.Errorf("missing variable: %v", err)
	}
	_, err = variableFrom("k", configGet{failed: true, message: "io"}, nil)
	if f, ok := err.(*JobError); !ok || !f.IsRetry() || f.Error() != "variable `k` could not be read: io" {
		t.Errorf("store error: %v", err)
	}
}
