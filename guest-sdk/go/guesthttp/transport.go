// Package guesthttp sends a processor's HTTP(S) requests through the host
// (wasi:http/outgoing-handler): Transport is an http.RoundTripper, so
// ordinary net/http code works.
//
//	client := &http.Client{Transport: guesthttp.Transport, Timeout: 10 * time.Second}
//	res, err := client.Post("https://api.example.com/v1/charges", "application/json", body)
//
// It is a package of its own, not part of package guest, because net/http's
// initialisation runs in every attempt's fresh instance (about 0.3 ms of
// CPU): a processor that sends no request does not import it and does not
// pay. One that does pays more still for http.Client (which links net/http's
// own Transport, TLS and HTTP/2: about 11 MB of component, about 1 ms more
// per fresh attempt); --instance-reuse removes both for stateless
// processors.
package guesthttp

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"bullpen.dev/guest"
	"bullpen.dev/guest/internal/outbound"
)

// Transport sends requests over wasi:http.
//
// The host sends only to origins the queue's binding grants
// (--allow-outbound); a refused request fails with a [*guest.HTTPError]
// (Denied set) whose text names the origin and the flag, as do network
// errors (http.Client wraps it in a *url.Error: errors.As finds it).
// Returned from the processor, such an error retries the job.
//
// The host follows no redirect; an http.Client follows them itself (each
// new URL is checked again) unless its CheckRedirect says otherwise. The
// request context's deadline (http.Client.Timeout, context.WithTimeout)
// bounds the wait for the response and each read of its body, and becomes
// the request's connect, first-byte and between-bytes timeouts; the host
// also clips every wait to what is left of the attempt's --timeout-ms.
// While a request waits, the host runs other attempts; inside the instance,
// other goroutines do not run until the wait ends (a cancellation without
// a deadline is seen between waits).
//
// The response body streams from the host (capped by
// --max-http-response-mb); close it. A request body of unknown length goes
// chunked. No Accept-Encoding is added and nothing is decompressed;
// connections, proxies and TLS are the host's.
var Transport http.RoundTripper = transport{}

type transport struct{}

func (transport) RoundTrip(req *http.Request) (*http.Response, error) {
	// A RoundTripper closes the request body, whatever happens.
	if req.Body != nil {
		defer req.Body.Close()
	}
	u := req.URL
	if u == nil {
		return nil, fmt.Errorf("guesthttp: request without a URL")
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return nil, fmt.Errorf("invalid URL %q: the scheme must be http or https", u.Redacted())
	}
	if u.Host == "" {
		return nil, fmt.Errorf("invalid URL %q: no host", u.Redacted())
	}
	method := strings.ToUpper(req.Method)
	if method == "" {
		method = http.MethodGet
	}
	body := req.Body
	if body == http.NoBody {
		body = nil
	}
	length := req.ContentLength
	if body == nil {
		length = 0
	} else if length == 0 {
		length = -1 // net/http: 0 with a body means unknown
	}

	header := make([][2]string, 0, len(req.Header)+2)
	for name, values := range req.Header {
		lower := strings.ToLower(name)
		for _, v := range values {
			header = append(header, [2]string{lower, v})
		}
	}
	if u.User != nil && req.Header.Get("Authorization") == "" {
		p, _ := u.User.Password()
		header = append(header, [2]string{"authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+p))})
	}
	// A known length is said (else the body goes chunked, which some
	// servers refuse), as net/http does.
	if req.Header.Get("Content-Length") == "" && length >= 0 &&
		(length > 0 || method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch) {
		header = append(header, [2]string{"content-length", strconv.FormatInt(length, 10)})
	}

	res, err := guest.Outbound(&outbound.Request{
		Ctx:           req.Context(),
		Method:        method,
		Scheme:        scheme,
		Authority:     u.Host,
		PathWithQuery: u.RequestURI(),
		Header:        header,
		Body:          body,
	})
	if err != nil {
		return nil, err
	}
	h := make(http.Header, len(res.Header))
	for _, kv := range res.Header {
		h.Add(kv[0], kv[1])
	}
	out := &http.Response{
		Status:        strconv.Itoa(res.Status) + " " + http.StatusText(res.Status),
		StatusCode:    res.Status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          res.Body,
		ContentLength: -1,
		Request:       req,
	}
	if n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil && n >= 0 {
		out.ContentLength = n
	}
	if method == http.MethodHead || res.Status == http.StatusNoContent || res.Status == http.StatusNotModified {
		res.Body.Close()
		out.Body = http.NoBody
	}
	return out, nil
}
