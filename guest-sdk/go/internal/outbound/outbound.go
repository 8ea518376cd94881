// Package outbound holds the types of the seam between package guest, which owns the
// canonical-ABI glue (one arena, one lock, the collector stopped around
// import calls), and package guesthttp, which adapts it to net/http. It
// exists so that package guest does not import net/http: net/http's
// package initialisation runs in every fresh instance, about 0.3 ms of CPU
// per attempt, which processors that never send a request must not pay.
package outbound

import (
	"context"
	"io"
)

// Request is one outgoing request, already checked and normalised.
type Request struct {
	Ctx           context.Context
	Method        string // upper-case
	Scheme        string // "http" or "https"
	Authority     string // host[:port]
	PathWithQuery string
	Header        [][2]string // names lower-case, in order
	Body          io.Reader   // nil: no body
}

// Response is a response whose body streams from the host.
type Response struct {
	Status int
	Header [][2]string // as received
	Body   io.ReadCloser
}
