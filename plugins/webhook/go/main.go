// webhook: POST a signed JSON payload; the same contract, byte for byte, as
// plugins/webhook/rust (tests and users rely on it):
//
//   - data `{"url": string, "payload": any}`;
//   - POSTs `JSON.stringify(payload)` with `content-type: application/json`
//     and `x-bullpen-signature: sha256=<hex HMAC-SHA256 of the body>`, keyed
//     with the queue's variable `webhook_secret`;
//   - 2xx: completed with `{"status": <code>, "body": <first 1024 bytes of
//     the response as text>}`;
//   - 429 or 5xx: retry after the response's `Retry-After` seconds (else
//     1000 ms), reason `HTTP <code>`;
//   - any other status: unrecoverable, reason `HTTP <code>`;
//   - a network error or a denied host: retry, naming the error;
//   - `webhook_secret` not set: unrecoverable, saying so.
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"bullpen.dev/guest"
	"bullpen.dev/guest/guesthttp"
	"bullpen.dev/guest/serdejson"
)

type data struct {
	URL     string          `json:"url"`
	Payload json.RawMessage `json:"payload"`
}

// client sends through the host (guesthttp.Transport) and leaves redirects to
// the caller, as the contract says (a 3xx is a status like any other).
var client = &http.Client{
	Transport:     guesthttp.Transport,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func process(job *guest.Job) (guest.Outcome, error) {
	var d data
	if err := job.Data(&d); err != nil {
		return guest.Outcome{}, err
	}
	if d.Payload == nil {
		return guest.Outcome{}, guest.Unrecoverable("unexpected JSON shape: missing field `payload`")
	}
	secret, err := guest.Variable("webhook_secret")
	if err != nil {
		return guest.Outcome{}, err
	}
	// The payload's text as the producer stored it (BullMQ stores
	// JSON.stringify's output), whitespace removed: JSON.stringify(payload).
	var body bytes.Buffer
	if err := json.Compact(&body, d.Payload); err != nil {
		return guest.Outcome{}, guest.Unrecoverable("unexpected JSON shape: " + err.Error())
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body.Bytes())
	signature := "sha256=" + hex.EncodeToString(mac.Sum(nil))

	req, err := http.NewRequest("POST", d.URL, bytes.NewReader(body.Bytes()))
	if err != nil {
		return guest.Outcome{}, guest.Retry(err.Error())
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("x-bullpen-signature", signature)
	res, err := client.Do(req)
	if err != nil {
		return guest.Outcome{}, networkError(err)
	}
	// The whole body is read whatever the status, as the Rust plugin's
	// client does (so an oversized one fails the read:
	// --max-http-response-mb).
	all, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return guest.Outcome{}, networkError(err)
	}
	switch code := res.StatusCode; {
	case code >= 200 && code <= 299:
		text, err := serdejson.Marshal(serdejson.Object{
			{Key: "status", Value: code},
			{Key: "body", Value: lossy(all[:min(len(all), 1024)])},
		})
		if err != nil {
			return guest.Outcome{}, err
		}
		return guest.CompleteJSON(text), nil
	case code == 429 || (code >= 500 && code <= 599):
		delayMs := uint64(1000)
		if s, err := strconv.ParseUint(strings.TrimSpace(res.Header.Get("retry-after")), 10, 64); err == nil {
			delayMs = math.MaxUint64
			if s <= math.MaxUint64/1000 {
				delayMs = s * 1000
			}
		}
		return guest.Outcome{}, guest.RetryAfter(fmt.Sprintf("HTTP %d", code), delayMs)
	default:
		return guest.Outcome{}, guest.Unrecoverable(fmt.Sprintf("HTTP %d", code))
	}
}

// networkError retries naming the error: the SDK's text (the origin, and
// for a denial the flag that grants it), not net/http's wrapping of it with
// the whole URL.
func networkError(err error) error {
	var h *guest.HTTPError
	if errors.As(err, &h) {
		return guest.Retry(h.Error())
	}
	return guest.Retry(err.Error())
}

// lossy is Rust's String::from_utf8_lossy: each maximal invalid subpart
// (Unicode's "substitution of maximal subparts") becomes one U+FFFD, so a
// character cut at byte 1024 reads as Rust's plugin reads it.
func lossy(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var out strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r != utf8.RuneError || n > 1 {
			out.Write(b[:n])
		} else {
			n = maximalSubpart(b)
			out.WriteString("\uFFFD")
		}
		b = b[n:]
	}
	return out.String()
}

// maximalSubpart is the length of the invalid sequence at b's start: its
// lead byte and the continuation bytes that could still have completed it
// (Unicode Table 3-7).
func maximalSubpart(b []byte) int {
	type span struct{ lo, hi byte }
	var next []span
	tail := span{0x80, 0xBF}
	switch c := b[0]; {
	case c >= 0xC2 && c <= 0xDF:
		next = []span{tail}
	case c == 0xE0:
		next = []span{{0xA0, 0xBF}, tail}
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		next = []span{tail, tail}
	case c == 0xED:
		next = []span{{0x80, 0x9F}, tail}
	case c == 0xF0:
		next = []span{{0x90, 0xBF}, tail, tail}
	case c >= 0xF1 && c <= 0xF3:
		next = []span{tail, tail, tail}
	case c == 0xF4:
		next = []span{{0x80, 0x8F}, tail, tail}
	}
	n := 1
	for _, s := range next {
		if n >= len(b) || b[n] < s.lo || b[n] > s.hi {
			break
		}
		n++
	}
	return n
}

func init() { guest.ExportProcessor(process) }

func main() {}
