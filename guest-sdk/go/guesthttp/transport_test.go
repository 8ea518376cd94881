package guesthttp

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"bullpen.dev/guest"
)

type closeRecorder struct {
	*strings.Reader
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

// Outside a host the request fails with the SDK's error, and the body is
// closed either way, as a RoundTripper must.
func TestRoundTripClosesTheBodyAndFailsOffHost(t *testing.T) {
	body := &closeRecorder{Reader: strings.NewReader("x")}
	req, _ := http.NewRequest("POST", "http://127.0.0.1:1/in", body)
	_, err := (&http.Client{Transport: Transport}).Do(req)
	var h *guest.HTTPError
	if !errors.As(err, &h) || !body.closed {
		t.Fatalf("err %v (%T), body closed %v", err, err, body.closed)
	}
	req, _ = http.NewRequest("GET", "ftp://example.com/", nil)
	if _, err := Transport.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "http or https") {
		t.Fatalf("ftp: %v", err)
	}
}
