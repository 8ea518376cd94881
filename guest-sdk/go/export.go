package guest

import (
	"fmt"
	"os"
	"runtime"
	"strings"
)

// Processor is the function bullpen calls for each attempt of each job.
type Processor func(job *Job) (Outcome, error)

// BackoffFunc is a custom backoff strategy: strategy is the job's
// opts.backoff.type, attemptsMade counts the attempt that just failed,
// reason is its failure text.
type BackoffFunc func(strategy string, attemptsMade uint32, reason string, job *Job) Backoff

// Backoff is what a custom backoff strategy decides after a retryable
// failure: [DelayMs] or [GiveUp].
type Backoff struct {
	giveUp  bool
	delayMs uint64
}

// DelayMs retries after ms milliseconds (0 = at once).
func DelayMs(ms uint64) Backoff { return Backoff{delayMs: ms} }

// GiveUp does not retry: the job fails now (BullMQ's custom backoff -1).
var GiveUp = Backoff{giveUp: true}

// IsGiveUp reports whether b is [GiveUp]; else b.Delay() is the delay.
func (b Backoff) IsGiveUp() bool { return b.giveUp }

// Delay is the retry delay in ms (0 for [GiveUp]).
func (b Backoff) Delay() uint64 { return b.delayMs }

// Option configures [ExportProcessor].
type Option func(*exported)

// WithBackoff also exports f as the component's `backoff` function, called
// when a job whose opts.backoff.type is not fixed/exponential fails
// retryably. Build such a processor for the `processor-with-backoff` world
// (bullpen-componentize --world processor-with-backoff).
func WithBackoff(f BackoffFunc) Option {
	return func(e *exported) { e.backoff = f }
}

type exported struct {
	process Processor
	backoff BackoffFunc
}

var registered exported

// ExportProcessor makes fn this component's `process` export (and, with
// [WithBackoff], its `backoff` export). Call it from an init function: a
// c-shared Go module runs its init functions when instantiated, never main.
//
//	func init() { guest.ExportProcessor(process) }
//	func init() { guest.ExportProcessor(process, guest.WithBackoff(backoff)) }
func ExportProcessor(fn Processor, opts ...Option) {
	e := exported{process: fn}
	for _, o := range opts {
		o(&e)
	}
	registered = e
}

// runProcess runs the registered processor on job. A panic prints the
// message to stderr (the job log) as Rust's panic hook does and traps, so
// the attempt fails with a failedReason that names the trap and the panic.
func runProcess(job *Job) processResult {
	if registered.process == nil {
		return processResult{kind: failUnrecoverable, reason: "no processor registered: call guest.ExportProcessor(fn) from an init function"}
	}
	defer trapOnPanic()
	out, err := registered.process(job)
	if err != nil {
		// The job's stacktrace entry goes to the host first, as Node's
		// worker writes err.stack with the failure.
		stack := stackOf(err, funcAt(registered.process))
		_ = callHost(func(h hostImports) error { h.setStacktrace(stack); return nil })
	}
	return toResult(out, err)
}

// runBackoff runs the registered backoff function; without one the job is
// retried at once, as the host does for a plugin without `backoff`.
func runBackoff(p backoffParams) Backoff {
	if registered.backoff == nil {
		return DelayMs(0)
	}
	defer trapOnPanic()
	return registered.backoff(p.strategy, p.attemptsMade, p.reason, p.job)
}

// trapOnPanic, deferred, turns a panic into a trap after printing
//
//	goroutine panicked at <file>:<line>:
//	<message>
//
// to stderr; the host puts the message into the failedReason.
func trapOnPanic() {
	v := recover()
	if v == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "goroutine panicked at %s:\n%s\n", panicSite(), panicMessage(v))
	trap()
}

func panicMessage(v any) string {
	switch v := v.(type) {
	case error:
		return v.Error()
	case string:
		return v
	case fmt.Stringer:
		return v.String()
	}
	return fmt.Sprint(v)
}

// panicSite is file:line of the frame that panicked (the first frame below
// runtime.gopanic that is not the runtime's own).
func panicSite() string {
	pcs := make([]uintptr, 64)
	n := runtime.Callers(2, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	seenPanic := false
	for {
		f, more := frames.Next()
		if f.Function == "runtime.gopanic" {
			seenPanic = true
		} else if seenPanic && !strings.HasPrefix(f.Function, "runtime.") {
			return fmt.Sprintf("%s:%d", f.File, f.Line)
		}
		if !more {
			return "unknown location"
		}
	}
}
