package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
)

// JobError is an error that says how the attempt fails when a plain error
// would not: make one with [Retry], [RetryAfter] or [Unrecoverable] and
// return it from the processor. It may be wrapped (fmt.Errorf("...: %w",
// f)); the whole error text is then the job's failedReason.
//
// Any other error returned from the processor fails the attempt
// retryably with its text as the failedReason, as a thrown Error does in a
// Node BullMQ worker. Either way the job's BullMQ `stacktrace` gets an
// entry: the error's type and text, where it was made (a JobError: the
// line that called Retry/RetryAfter/Unrecoverable; any other error: the
// processor function that returned it, as Go errors do not record where
// they were made), then the errors it wraps (`Caused by:` lines).
type JobError struct {
	kind    failureKind
	reason  string
	delayMs uint64
	// where it was made: "function (file:line)"
	at string
}

// Retry fails the attempt retryably: the job is retried according to its
// `attempts` and `backoff` options, else it fails with reason as its
// failedReason (a Node processor throwing an Error).
func Retry(reason string) *JobError {
	return &JobError{kind: failRetry, reason: reason, at: callerAt(2)}
}

// RetryAfter fails the attempt and asks for the next one after delayMs
// milliseconds (Celery's countdown), if attempts remain; else the job fails
// with reason.
func RetryAfter(reason string, delayMs uint64) *JobError {
	return &JobError{kind: failRetryAfter, reason: reason, delayMs: delayMs, at: callerAt(2)}
}

// Unrecoverable fails the job now, whatever `attempts` says (BullMQ's
// UnrecoverableError).
func Unrecoverable(reason string) *JobError {
	return &JobError{kind: failUnrecoverable, reason: reason, at: callerAt(2)}
}

// callerAt is "function (file:line)" of the caller `skip` frames up.
func callerAt(skip int) string {
	pc, file, line, ok := runtime.Caller(skip)
	if !ok {
		return ""
	}
	name := "?"
	if f := runtime.FuncForPC(pc); f != nil {
		name = f.Name()
	}
	return fmt.Sprintf("%s (%s:%d)", name, file, line)
}

// funcAt is "function (file:line)" of a function value's declaration.
func funcAt(fn any) string {
	f := runtime.FuncForPC(reflect.ValueOf(fn).Pointer())
	if f == nil {
		return ""
	}
	file, line := f.FileLine(f.Entry())
	return fmt.Sprintf("%s (%s:%d)", f.Name(), file, line)
}

// stackOf is err's `stacktrace` entry: "Type: text", "    at where", and
// "Caused by: ..." for each error it wraps. fallback is where a plain
// error came from (the processor function).
func stackOf(err error, fallback string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%T: %s", err, err.Error())
	at := fallback
	var je *JobError
	if errors.As(err, &je) && je.at != "" {
		at = je.at
	}
	if at != "" {
		b.WriteString("\n    at " + at)
	}
	for c := errors.Unwrap(err); c != nil; c = errors.Unwrap(c) {
		fmt.Fprintf(&b, "\nCaused by: %T: %s", c, c.Error())
	}
	return b.String()
}

// Error returns the failure reason.
func (f *JobError) Error() string { return f.reason }

// Reason is the failedReason this failure records.
func (f *JobError) Reason() string { return f.reason }

// IsRetry reports whether the failure is retryable per the job's options
// ([Retry]).
func (f *JobError) IsRetry() bool { return f.kind == failRetry }

// IsUnrecoverable reports whether the failure ends the job at once.
func (f *JobError) IsUnrecoverable() bool { return f.kind == failUnrecoverable }

// RetryDelay is the delay asked for by [RetryAfter], and whether there is one.
func (f *JobError) RetryDelay() (delayMs uint64, ok bool) {
	return f.delayMs, f.kind == failRetryAfter
}

// HostErrorKind says why the host refused a call.
type HostErrorKind uint8

const (
	// LockLost: this worker no longer holds the job's lock. Nothing was
	// written; return the error and the host abandons the attempt without
	// completing or failing the job, because its new owner will.
	LockLost HostErrorKind = iota
	// WrongState: the job is not in the state the call needs.
	WrongState
	// Invalid: the arguments were refused before touching Redis (not JSON,
	// too large, a queue this binding may not add children to, ...).
	Invalid
	// Unavailable: Redis or the host failed.
	Unavailable
)

// String gives the WIT name: lock-lost, wrong-state, invalid, unavailable.
func (k HostErrorKind) String() string {
	switch k {
	case LockLost:
		return "lock-lost"
	case WrongState:
		return "wrong-state"
	case Invalid:
		return "invalid"
	case Unavailable:
		return "unavailable"
	}
	return fmt.Sprintf("HostErrorKind(%d)", uint8(k))
}

// HostError is a host call the host refused (the WIT `job-error`).
// Returned from the processor, it fails the attempt retryably with its
// text as the reason (after a lost lock the host ignores it and writes
// nothing).
type HostError struct {
	Kind HostErrorKind
	// Message is the host's explanation (empty for LockLost).
	Message string
}

func (e *HostError) Error() string {
	switch e.Kind {
	case LockLost:
		return "lock lost: this worker no longer owns the job"
	case WrongState:
		return "job in wrong state: " + e.Message
	case Invalid:
		return "invalid argument: " + e.Message
	default:
		return "host unavailable: " + e.Message
	}
}

// IsLockLost reports whether err is (or wraps) a lost-lock host error:
// stop and return it.
func IsLockLost(err error) bool {
	var h *HostError
	return errors.As(err, &h) && h.Kind == LockLost
}

// invalidJSON is what data that does not decode (or a value that does not
// encode) becomes: it will not fit on a retry either, so it is
// unrecoverable. Valid JSON of another shape (a string for a number) is
// "unexpected JSON shape: ...", text that is not JSON "invalid JSON: ...",
// as in every SDK.
func invalidJSON(err error) *JobError {
	var shape *json.UnmarshalTypeError
	if errors.As(err, &shape) {
		return Unrecoverable("unexpected JSON shape: " + err.Error())
	}
	return Unrecoverable("invalid JSON: " + err.Error())
}

// toResult maps what a processor returned to the `process` result.
func toResult(out Outcome, err error) processResult {
	if err == nil {
		if out.moved {
			return processResult{ok: true, moved: true}
		}
		if !out.set {
			return processResult{kind: failUnrecoverable, reason: "processor returned neither an outcome nor an error (use guest.Complete, guest.CompleteJSON or the Outcome of DelayUntil/RateLimit/MoveToWait/WaitForChildren)"}
		}
		return processResult{ok: true, json: out.json}
	}
	var f *JobError
	if errors.As(err, &f) {
		return processResult{kind: f.kind, reason: err.Error(), delayMs: f.delayMs}
	}
	// A host error, or any other error: retryable, as a thrown Error in
	// a Node processor.
	return processResult{kind: failRetry, reason: err.Error()}
}
