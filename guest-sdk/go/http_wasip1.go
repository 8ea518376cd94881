//go:build wasip1

package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"time"
	"unsafe"

	"bullpen.dev/guest/internal/outbound"
)

// The wasi:http, wasi:io, wasi:clocks and wasi:config imports, lowered
// (layouts in abi_http.go). Go's linker keeps an import only when code that
// calls it is reachable: a processor that never sends a request or reads a
// variable imports none of them, and bullpen-componentize then leaves them
// out of the component.
//
// Resources are u32 handles; each is dropped by the code that owns it,
// children before parents (a stream before its body, a pollable before
// what it watches), as wasmtime requires.

//go:wasmimport wasi:http/types@0.2.12 [constructor]fields
func wasmFieldsNew() uint32

//go:wasmimport wasi:http/types@0.2.12 [method]fields.append
func wasmFieldsAppend(self uint32, name string, value string, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]fields.entries
func wasmFieldsEntries(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]fields
func wasmFieldsDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [constructor]outgoing-request
func wasmOutgoingRequestNew(headers uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-request.body
func wasmOutgoingRequestBody(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-request.set-method
func wasmOutgoingRequestSetMethod(self uint32, tag uint32, other string) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-request.set-scheme
func wasmOutgoingRequestSetScheme(self uint32, some uint32, tag uint32, other string) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-request.set-authority
func wasmOutgoingRequestSetAuthority(self uint32, some uint32, authority string) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-request.set-path-with-query
func wasmOutgoingRequestSetPathWithQuery(self uint32, some uint32, path string) uint32

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]outgoing-request
func wasmOutgoingRequestDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [constructor]request-options
func wasmRequestOptionsNew() uint32

//go:wasmimport wasi:http/types@0.2.12 [method]request-options.set-connect-timeout
func wasmRequestOptionsSetConnectTimeout(self uint32, some uint32, ns uint64) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]request-options.set-first-byte-timeout
func wasmRequestOptionsSetFirstByteTimeout(self uint32, some uint32, ns uint64) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]request-options.set-between-bytes-timeout
func wasmRequestOptionsSetBetweenBytesTimeout(self uint32, some uint32, ns uint64) uint32

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]request-options
func wasmRequestOptionsDrop(self uint32)

//go:wasmimport wasi:http/outgoing-handler@0.2.12 handle
func wasmOutgoingHandlerHandle(request uint32, someOptions uint32, options uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-body.write
func wasmOutgoingBodyWrite(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [static]outgoing-body.finish
func wasmOutgoingBodyFinish(self uint32, someTrailers uint32, trailers uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]outgoing-body
func wasmOutgoingBodyDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]future-incoming-response.subscribe
func wasmFutureIncomingResponseSubscribe(self uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]future-incoming-response.get
func wasmFutureIncomingResponseGet(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]future-incoming-response
func wasmFutureIncomingResponseDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-response.status
func wasmIncomingResponseStatus(self uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-response.headers
func wasmIncomingResponseHeaders(self uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-response.consume
func wasmIncomingResponseConsume(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]incoming-response
func wasmIncomingResponseDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-body.stream
func wasmIncomingBodyStream(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [static]incoming-body.finish
func wasmIncomingBodyFinish(self uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]incoming-body
func wasmIncomingBodyDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]future-trailers
func wasmFutureTrailersDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 http-error-code
func wasmHTTPErrorCode(err uint32, ret uint32)

//go:wasmimport wasi:io/streams@0.2.12 [method]input-stream.read
func wasmInputStreamRead(self uint32, n uint64, ret uint32)

//go:wasmimport wasi:io/streams@0.2.12 [method]input-stream.subscribe
func wasmInputStreamSubscribe(self uint32) uint32

//go:wasmimport wasi:io/streams@0.2.12 [resource-drop]input-stream
func wasmInputStreamDrop(self uint32)

//go:wasmimport wasi:io/streams@0.2.12 [method]output-stream.blocking-write-and-flush
func wasmOutputStreamBlockingWriteAndFlush(self uint32, data string, ret uint32)

//go:wasmimport wasi:io/streams@0.2.12 [resource-drop]output-stream
func wasmOutputStreamDrop(self uint32)

//go:wasmimport wasi:io/error@0.2.12 [method]error.to-debug-string
func wasmErrorToDebugString(self uint32, ret uint32)

//go:wasmimport wasi:io/error@0.2.12 [resource-drop]error
func wasmErrorDrop(self uint32)

//go:wasmimport wasi:io/poll@0.2.12 [method]pollable.block
func wasmPollableBlock(self uint32)

//go:wasmimport wasi:io/poll@0.2.12 poll
func wasmPoll(list uint32, n uint32, ret uint32)

//go:wasmimport wasi:io/poll@0.2.12 [resource-drop]pollable
func wasmPollableDrop(self uint32)

//go:wasmimport wasi:clocks/monotonic-clock@0.2.12 subscribe-duration
func wasmSubscribeDuration(ns uint64) uint32

//go:wasmimport wasi:config/store@0.2.0-rc.1 get
func wasmConfigGet(key string, ret uint32)

func storeGet(name string) (configGet, error) {
	return callArea(configGetResultSize, 4, func(ret uint32) { wasmConfigGet(name, ret) }, liftConfigGet)
}

// own is result<handle> lifted.
type own struct {
	h  uint32
	ok bool
}

func liftOwn(a *arena, ret uint32) (own, error) {
	h, ok, err := liftOwnResult(a, ret)
	return own{h, ok}, err
}

// handled is result<handle, error-code> lifted.
type handled struct {
	h    uint32
	code *errorCode
}

func liftHandled(a *arena, ret uint32) (handled, error) {
	h, code, err := liftHandleResult(a, ret)
	return handled{h, code}, err
}

// bytesArg passes b to an import as a string parameter: (ptr, len) of the
// same memory, no copy. The caller keeps b alive over the call.
func bytesArg(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// wasiMethods are wasi:http's method cases before `other`.
var wasiMethods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// sdkError is an answer from the host the SDK could not decode.
func sdkError(origin string, err error) *HTTPError {
	return &HTTPError{Origin: origin, msg: "bullpen guest SDK: " + err.Error()}
}

func send(req *outbound.Request) (*outbound.Response, error) {
	origin := req.Scheme + "://" + req.Authority
	fail := func(msg string) *HTTPError { return &HTTPError{Origin: origin, msg: msg} }
	ctx := req.Ctx
	if err := ctx.Err(); err != nil {
		return nil, deadlineError(origin, err)
	}

	headers := wasmFieldsNew()
	for _, h := range req.Header {
		name, value := h[0], h[1]
		e, err := callArea(headerResultSize, 1, func(ret uint32) { wasmFieldsAppend(headers, name, value, ret) }, liftHeaderResult)
		if err != nil || e != "" {
			wasmFieldsDrop(headers)
			if err != nil {
				return nil, sdkError(origin, err)
			}
			return nil, fail(fmt.Sprintf("header %q refused: %s", name, e))
		}
	}

	request := wasmOutgoingRequestNew(headers) // takes the headers
	tag, other := uint32(len(wasiMethods)), req.Method
	for i, m := range wasiMethods {
		if m == req.Method {
			tag, other = uint32(i), ""
		}
	}
	schemeTag := uint32(0)
	if req.Scheme == "https" {
		schemeTag = 1
	}
	var why string
	switch {
	case wasmOutgoingRequestSetMethod(request, tag, other) != 0:
		why = "invalid method"
	case wasmOutgoingRequestSetScheme(request, 1, schemeTag, "") != 0:
		why = "invalid scheme"
	case wasmOutgoingRequestSetAuthority(request, 1, req.Authority) != 0:
		why = "invalid host"
	case wasmOutgoingRequestSetPathWithQuery(request, 1, req.PathWithQuery) != 0:
		why = "invalid path"
	}
	if why != "" {
		wasmOutgoingRequestDrop(request)
		return nil, fail(why)
	}
	options, someOptions := uint32(0), uint32(0)
	if d, ok := ctx.Deadline(); ok {
		left := time.Until(d)
		if left <= 0 {
			wasmOutgoingRequestDrop(request)
			return nil, deadlineError(origin, context.DeadlineExceeded)
		}
		options, someOptions = wasmRequestOptionsNew(), 1
		ns := uint64(left)
		wasmRequestOptionsSetConnectTimeout(options, 1, ns)
		wasmRequestOptionsSetFirstByteTimeout(options, 1, ns)
		wasmRequestOptionsSetBetweenBytesTimeout(options, 1, ns)
	}
	body, err := callArea(ownResultSize, 4, func(ret uint32) { wasmOutgoingRequestBody(request, ret) }, liftOwn)
	if err != nil || !body.ok {
		if someOptions != 0 {
			wasmRequestOptionsDrop(options)
		}
		wasmOutgoingRequestDrop(request)
		return nil, fail("request body unavailable")
	}
	// Send first, then write the body: the host streams it as written.
	sent, err := callArea(handleResultSize, 8, func(ret uint32) {
		wasmOutgoingHandlerHandle(request, someOptions, options, ret)
	}, liftHandled)
	if err != nil || sent.code != nil {
		wasmOutgoingBodyDrop(body.h)
		if err != nil {
			return nil, sdkError(origin, err)
		}
		return nil, describe(origin, *sent.code)
	}
	future := sent.h

	// A body that cannot be sent is usually a request that failed (a
	// refused connection, a denial): that error is the response's, so
	// remember the write's and report the response's first.
	writeErr := writeBody(origin, body.h, req.Body)
	if writeErr == nil {
		fin, err := callArea(handleResultSize, 8, func(ret uint32) { wasmOutgoingBodyFinish(body.h, 0, 0, ret) }, liftHandled)
		switch {
		case err != nil:
			writeErr = sdkError(origin, err)
		case fin.code != nil:
			writeErr = describe(origin, *fin.code)
		}
	} else {
		wasmOutgoingBodyDrop(body.h)
	}

	pollable := wasmFutureIncomingResponseSubscribe(future)
	var got futureGet
	for {
		got, err = callArea(futureGetSize, 8, func(ret uint32) { wasmFutureIncomingResponseGet(future, ret) }, liftFutureGet)
		if err != nil {
			err = sdkError(origin, err)
			break
		}
		if got.ready {
			break
		}
		if err = wait(ctx, pollable); err != nil {
			err = deadlineError(origin, err)
			break
		}
	}
	wasmPollableDrop(pollable)
	wasmFutureIncomingResponseDrop(future)
	switch {
	case err != nil:
		return nil, err
	case got.taken:
		return nil, fail("the response was already taken")
	case got.failed != nil:
		return nil, describe(origin, *got.failed)
	case writeErr != nil:
		wasmIncomingResponseDrop(got.response)
		return nil, writeErr
	}
	return response(ctx, origin, got.response)
}

// writeBody writes the request body to the outgoing body's stream, 4096
// bytes at a time (blocking-write-and-flush's limit).
func writeBody(origin string, body uint32, r io.Reader) error {
	if r == nil {
		return nil
	}
	stream, err := callArea(ownResultSize, 4, func(ret uint32) { wasmOutgoingBodyWrite(body, ret) }, liftOwn)
	if err != nil || !stream.ok {
		return &HTTPError{Origin: origin, msg: "request body unavailable"}
	}
	defer wasmOutputStreamDrop(stream.h)
	buf := make([]byte, 4096)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			res, err := callArea(streamResultSize, 4, func(ret uint32) {
				wasmOutputStreamBlockingWriteAndFlush(stream.h, bytesArg(buf[:n]), ret)
			}, liftStreamUnit)
			runtime.KeepAlive(buf)
			switch {
			case err != nil:
				return sdkError(origin, err)
			case res.failed != 0:
				return streamFailure(origin, res.failed, false)
			case res.closed:
				return &HTTPError{Origin: origin, msg: "the connection closed while sending the body"}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("reading the request body: %w", rerr)
		}
	}
}

// streamFailure describes (and drops) the error of a failed stream
// operation: an HTTP error code when the host gives one, else its text.
func streamFailure(origin string, e uint32, reading bool) error {
	defer wasmErrorDrop(e)
	code, err := callArea(handleResultSize, 8, func(ret uint32) { wasmHTTPErrorCode(e, ret) }, liftOptionErrorCode)
	if err == nil && code != nil {
		return describe(origin, *code)
	}
	text, _ := callArea(listSize, 4, func(ret uint32) { wasmErrorToDebugString(e, ret) }, liftString)
	if reading {
		return bodyReadError(origin, text)
	}
	return &HTTPError{Origin: origin, msg: "sending the body failed: " + text}
}

// pollList is poll's argument: the pollable waited on and the deadline's.
// Written and read only inside callArea (callMu).
var pollList [2]uint32

// wait blocks until p is ready or ctx's deadline passes. The whole
// instance waits (no other goroutine runs); the host runs other attempts.
func wait(ctx context.Context, p uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d, ok := ctx.Deadline()
	if !ok {
		wasmPollableBlock(p)
		return nil
	}
	left := time.Until(d)
	if left <= 0 {
		return context.DeadlineExceeded
	}
	clock := wasmSubscribeDuration(uint64(left))
	ready, err := callArea(listSize, 4, func(ret uint32) {
		pollList = [2]uint32{p, clock}
		wasmPoll(uint32(uintptr(unsafe.Pointer(&pollList[0]))), 2, ret)
	}, liftU32List)
	wasmPollableDrop(clock)
	if err != nil {
		return err
	}
	for _, i := range ready {
		if i == 0 {
			return nil
		}
	}
	return context.DeadlineExceeded
}

// response lifts an incoming-response: status, headers, and its body as a
// stream.
func response(ctx context.Context, origin string, res uint32) (*outbound.Response, error) {
	status := int(wasmIncomingResponseStatus(res))
	fields := wasmIncomingResponseHeaders(res)
	entries, err := callArea(listSize, 4, func(ret uint32) { wasmFieldsEntries(fields, ret) }, liftFieldsEntries)
	wasmFieldsDrop(fields)
	if err != nil {
		wasmIncomingResponseDrop(res)
		return nil, sdkError(origin, err)
	}
	header := make([][2]string, len(entries))
	for i, e := range entries {
		header[i] = [2]string{e.name, e.value}
	}
	body, err := callArea(ownResultSize, 4, func(ret uint32) { wasmIncomingResponseConsume(res, ret) }, liftOwn)
	if err != nil || !body.ok {
		wasmIncomingResponseDrop(res)
		return nil, &HTTPError{Origin: origin, msg: "response body unavailable"}
	}
	stream, err := callArea(ownResultSize, 4, func(ret uint32) { wasmIncomingBodyStream(body.h, ret) }, liftOwn)
	if err != nil || !stream.ok {
		wasmIncomingBodyDrop(body.h)
		wasmIncomingResponseDrop(res)
		return nil, &HTTPError{Origin: origin, msg: "response body unavailable"}
	}
	rb := &responseBody{ctx: ctx, origin: origin, response: res, body: body.h, stream: stream.h}
	return &outbound.Response{Status: status, Header: header, Body: rb}, nil
}

// responseBody streams an incoming body; at its end or on Close it gives
// its resources back.
type responseBody struct {
	ctx      context.Context
	origin   string
	response uint32
	body     uint32
	stream   uint32
	pollable uint32 // the stream's, made at the first wait
	err      error  // sticky: io.EOF at the end
	released bool
}

// readChunk keeps a read's answer inside cabi_realloc's static scratch
// (no Go allocation while the host writes it).
const readChunk = 32 << 10

func (b *responseBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) > readChunk {
		p = p[:readChunk]
	}
	for {
		res, err := callArea(streamResultSize, 4, func(ret uint32) {
			wasmInputStreamRead(b.stream, uint64(len(p)), ret)
		}, func(a *arena, ret uint32) (streamResult, error) { return liftStreamRead(a, ret, p) })
		switch {
		case err != nil:
			b.err = sdkError(b.origin, err)
		case res.n > 0:
			return res.n, nil
		case res.closed:
			b.err = io.EOF
			b.release()
		case res.failed != 0:
			b.err = streamFailure(b.origin, res.failed, true)
		default: // nothing yet
			if b.pollable == 0 {
				b.pollable = wasmInputStreamSubscribe(b.stream)
			}
			if err := wait(b.ctx, b.pollable); err != nil {
				b.err = deadlineError(b.origin, err)
			}
		}
		if b.err != nil {
			return 0, b.err
		}
	}
}

func (b *responseBody) Close() error {
	if b.err == nil {
		b.err = errBodyClosed
	}
	b.release()
	return nil
}

var errBodyClosed = errors.New("http: read on closed response body")

func (b *responseBody) release() {
	if b.released {
		return
	}
	b.released = true
	if b.pollable != 0 {
		wasmPollableDrop(b.pollable)
	}
	wasmInputStreamDrop(b.stream)
	wasmFutureTrailersDrop(wasmIncomingBodyFinish(b.body))
	wasmIncomingResponseDrop(b.response)
}
