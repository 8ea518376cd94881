package guest

// Outbound HTTP's errors and the queue's variables. The net/http side
// (Transport) is package bullpen.dev/guest/guesthttp, so that processors
// that send no request do not link net/http (its initialisation would run
// in every attempt's fresh instance).

import (
	"context"
	"fmt"
	"strings"

	"bullpen.dev/guest/internal/outbound"
)

// Outbound sends one request over wasi:http: package guesthttp's way in
// (its argument types are internal). Processors use guesthttp.Transport.
// It is a function, not a hook set at init, so that the linker drops the
// wasi:http glue, and the component its imports, when guesthttp is unused.
func Outbound(req *outbound.Request) (*outbound.Response, error) { return send(req) }

// HTTPError is why a request sent with guesthttp.Transport got no
// response (or its body could not be read): the host refused it or the
// network failed. net/http's Client wraps it in a *url.Error (whose text
// adds the method and the whole URL); errors.As finds it.
type HTTPError struct {
	// Origin is the request's scheme://host[:port] (never its path or query).
	Origin string
	// Denied: the host refused it before it left: not in --allow-outbound,
	// or the SSRF rule (a name resolving to a private address).
	Denied bool
	msg    string
	cause  error
}

func (e *HTTPError) Error() string { return e.msg }

// Unwrap gives context.DeadlineExceeded for a request that ran out of its
// context's time.
func (e *HTTPError) Unwrap() error { return e.cause }

// Timeout reports whether the request timed out (net.Error).
func (e *HTTPError) Timeout() bool {
	return e.cause == context.DeadlineExceeded || strings.Contains(e.msg, "timed out")
}

// Temporary is net.Error's deprecated method: network trouble may pass.
func (e *HTTPError) Temporary() bool { return !e.Denied }

// describe gives the text for a wasi:http error code: what happened, to
// which origin, and for a refusal, the flag that grants it. The texts are
// the Rust SDK's (guest-sdk/rust/src/http.rs).
func describe(origin string, code errorCode) *HTTPError {
	e := &HTTPError{Origin: origin}
	switch code.tag {
	case ecHTTPRequestDenied:
		e.Denied = true
		e.msg = fmt.Sprintf("request to %s denied: not in this queue's allow-list "+
			"(grant it with --allow-outbound %s, or allowed_outbound_hosts in bullpen.toml)", origin, origin)
	case ecDestinationIPProhibited:
		e.Denied = true
		e.msg = fmt.Sprintf("request to %s refused: the host resolves to a loopback, link-local, private or "+
			"unspecified address; grant that IP itself with --allow-outbound to reach it", origin)
	case ecConnectionRefused:
		e.msg = fmt.Sprintf("request to %s failed: connection refused", origin)
	case ecConnectionTimeout:
		e.msg = fmt.Sprintf("request to %s failed: connect timed out", origin)
	case ecConnectionReadTimeout, ecHTTPResponseTimeout:
		e.msg = fmt.Sprintf("request to %s failed: timed out waiting for the response", origin)
	case ecConnectionLimitReached:
		e.msg = fmt.Sprintf("request to %s refused: too many requests in flight in this attempt (--max-http-in-flight)", origin)
	case ecHTTPResponseBodySize:
		n := "over the limit"
		if code.hasSize {
			n = fmt.Sprint(code.size)
		}
		e.msg = fmt.Sprintf("response from %s is too large (%s bytes read; --max-http-response-mb)", origin, n)
	case ecTLSCertificateError, ecTLSProtocolError, ecTLSAlertReceived:
		e.msg = fmt.Sprintf("request to %s failed: TLS error (%s); a private CA needs --http-ca", origin, code.name())
	case ecDNSError:
		e.msg = fmt.Sprintf("request to %s failed: DNS error (%s)", origin, code.text)
	case ecInternalError:
		if code.hasText {
			e.msg = fmt.Sprintf("request to %s failed: %s", origin, code.text)
			break
		}
		fallthrough
	default:
		e.msg = fmt.Sprintf("request to %s failed: %s", origin, code.name())
	}
	return e
}

// deadlineError is a request that ran out of its context's time.
func deadlineError(origin string, err error) *HTTPError {
	if err == context.DeadlineExceeded {
		return &HTTPError{Origin: origin, msg: fmt.Sprintf("request to %s failed: timed out (the request's deadline)", origin), cause: err}
	}
	return &HTTPError{Origin: origin, msg: fmt.Sprintf("request to %s failed: %v", origin, err), cause: err}
}

// bodyReadError is a failed body read whose error the host gave only as
// text (wasmtime-wasi-http reports body errors as its own error type, which
// http-error-code does not recognise).
func bodyReadError(origin, text string) *HTTPError {
	hint := ""
	if strings.Contains(text, "body size exceeds limit") {
		hint = " (--max-http-response-mb)"
	}
	return &HTTPError{Origin: origin, msg: fmt.Sprintf("reading the response from %s failed: %s%s", origin, text, hint)}
}

// Variable returns the queue's variable name (--var, [queues.variables] in
// bullpen.toml): configuration and secrets. A guest reads only its own
// queue's. Missing, it is an [Unrecoverable] error naming the variable and
// how to set it (retrying would not make it appear). Never log the value
// of a secret.
func Variable(name string) (string, error) {
	g, err := storeGet(name)
	return variableFrom(name, g, err)
}

func variableFrom(name string, g configGet, err error) (string, error) {
	switch {
	case err != nil:
		return "", Retry(fmt.Sprintf("variable `%s` could not be read: %v", name, err))
	case g.failed:
		return "", Retry(fmt.Sprintf("variable `%s` could not be read: %s", name, g.message))
	case !g.found:
		return "", Unrecoverable(fmt.Sprintf("variable `%s` is not set for this queue (set it with --var %s=... / "+
			"--var-env %s=ENVNAME, or in [queues.variables] of bullpen.toml)", name, name, name))
	}
	return g.value, nil
}
