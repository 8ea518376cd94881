// Package guest writes bullpen job processors in Go.
//
// A processor is a function from a [*Job] to ([Outcome], error), compiled
// with Go's own toolchain to a WebAssembly component (GOOS=wasip1
// GOARCH=wasm -buildmode=c-shared, then bullpen-componentize). bullpen runs
// it once per attempt, in a fresh instance, on jobs from a BullMQ queue.
//
//	package main
//
//	import "bullpen.dev/guest"
//
//	type Email struct{ To string `json:"to"` }
//
//	func process(job *guest.Job) (guest.Outcome, error) {
//		var email Email
//		if err := job.Data(&email); err != nil { // typed data via encoding/json
//			return guest.Outcome{}, err
//		}
//		if err := job.Log("sending to " + email.To); err != nil {
//			return guest.Outcome{}, err
//		}
//		if email.To == "" {
//			return guest.Outcome{}, guest.Unrecoverable("no recipient") // no retries
//		}
//		return guest.Complete(map[string]bool{"sent": true})
//	}
//
//	func init() { guest.ExportProcessor(process) }
//
//	func main() {}
//
// The API mirrors the Rust SDK (bullpen-guest) call for call. Every host
// call is checked against the job's lock token by the host: after the
// worker lost the lock, calls return a [*HostError] of kind [LockLost];
// return it and the host abandons the attempt without writing anything.
//
// Outbound HTTP(S) goes through package bullpen.dev/guest/guesthttp
// (guesthttp.Transport, an http.RoundTripper over wasi:http; failures are
// [*HTTPError]); [Variable] reads the queue's variables and secrets. Both
// are denied unless the queue's binding grants them.
//
// The SDK stops Go's garbage collector while the host may write into the
// instance (from its package initialisation, and from the moment `process`
// returns, until the next job has been read; and for the length of each
// host call): a collection there would make WASI calls where the component
// model forbids them. Your code runs with your own collector settings
// (runtime/debug.SetGCPercent, SetMemoryLimit; by default GOGC=100, no
// limit), put back each time.
package guest

import (
	"bytes"
	"encoding/json"
	"sync"
)

// ParentRef is the parent of a child job in a flow.
type ParentRef struct {
	// ID is the parent's job id.
	ID string
	// Queue is the parent's queue name.
	Queue string
}

// Job is the job being processed: a snapshot taken when the attempt
// started, plus the host calls that act on it.
type Job struct {
	id, name, queue, data, opts   string
	attemptsMade, attemptsStarted uint32
	timestamp                     uint64
	progress                      string
	parent                        *ParentRef
}

// ID is the BullMQ job id.
func (j *Job) ID() string { return j.id }

// Name is the job name given by the producer.
func (j *Job) Name() string { return j.name }

// Queue is the queue the job came from.
func (j *Job) Queue() string { return j.queue }

// Data decodes the job data into v (as json.Unmarshal). Data that does not
// fit v is an unrecoverable failure ("unexpected JSON shape: ..."; text
// that is not JSON, "invalid JSON: ..."): return the error.
func (j *Job) Data(v any) error {
	if err := json.Unmarshal([]byte(j.data), v); err != nil {
		return invalidJSON(err)
	}
	return nil
}

// DataJSON is the job data as JSON text, exactly as stored in Redis.
func (j *Job) DataJSON() string { return j.data }

// OptsJSON is the job options as JSON text (BullMQ field names).
func (j *Job) OptsJSON() string { return j.opts }

// AttemptsMade counts the attempts that ended before this one (BullMQ
// attemptsMade).
func (j *Job) AttemptsMade() uint32 { return j.attemptsMade }

// AttemptsStarted counts the times the job was started, this one included
// (attemptsStarted).
func (j *Job) AttemptsStarted() uint32 { return j.attemptsStarted }

// Timestamp is when the job was added, in ms since the Unix epoch.
func (j *Job) Timestamp() uint64 { return j.timestamp }

// ProgressJSON is the last reported progress as JSON text.
func (j *Job) ProgressJSON() string { return j.progress }

// Parent is the parent job when this job is a child in a flow, else nil.
func (j *Job) Parent() *ParentRef {
	if j.parent == nil {
		return nil
	}
	p := *j.parent
	return &p
}

// UpdateData replaces the job's data with v as JSON (seen by later
// attempts): the step pattern's memory.
func (j *Job) UpdateData(v any) error {
	text, err := marshal(v)
	if err != nil {
		return invalidJSON(err)
	}
	return callHost(func(h hostImports) error { return h.updateData(text) })
}

// Progress reports progress: a number or any value that encodes as JSON.
func (j *Job) Progress(v any) error {
	text, err := marshal(v)
	if err != nil {
		return invalidJSON(err)
	}
	return callHost(func(h hostImports) error { return h.updateProgress(text) })
}

// Log appends one line to the job's BullMQ log.
func (j *Job) Log(line string) error {
	return callHost(func(h hostImports) error { return h.log(line) })
}

// DelayUntil moves the job to the delayed set until timestampMs (ms since
// the Unix epoch) and ends the attempt: return the [Moved] outcome it gives.
// attemptsMade does not grow.
func (j *Job) DelayUntil(timestampMs uint64) (Outcome, error) {
	if err := callHost(func(h hostImports) error { return h.moveToDelayed(timestampMs) }); err != nil {
		return Outcome{}, err
	}
	return Moved, nil
}

// RateLimit rate-limits this job's queue for every worker for delayMs
// (Node's worker.rateLimit(ms) + Worker.RateLimitError), puts the job back
// in wait and ends the attempt: return the [Moved] outcome it gives.
// attemptsMade does not grow. delayMs must be at least 1.
func (j *Job) RateLimit(delayMs uint64) (Outcome, error) {
	if err := callHost(func(h hostImports) error { return h.rateLimit(delayMs) }); err != nil {
		return Outcome{}, err
	}
	return Moved, nil
}

// MoveToWait puts the job back in wait, without a delay (BullMQ's
// job.moveToWait(token) + WaitingError), and ends the attempt: return the
// [Moved] outcome it gives. attemptsMade does not grow.
func (j *Job) MoveToWait() (Outcome, error) {
	if err := callHost(func(h hostImports) error { return h.moveToWait() }); err != nil {
		return Outcome{}, err
	}
	return Moved, nil
}

// AddChild adds a child job to queue whose parent is this job and returns
// its id. data is encoded as JSON; opts are BullMQ job options (anything
// that encodes as a JSON object, e.g. map[string]any{"jobId": "..."}; nil
// for none). Give the child a jobId derived from the parent's id and step,
// so a retried step does not add it twice.
func (j *Job) AddChild(queue, name string, data any, opts any) (string, error) {
	d, err := marshal(data)
	if err != nil {
		return "", invalidJSON(err)
	}
	o := ""
	if opts != nil {
		if o, err = marshal(opts); err != nil {
			return "", invalidJSON(err)
		}
		if o == "null" {
			o = ""
		}
	}
	var id string
	err = callHost(func(h hostImports) (e error) {
		id, e = h.addChild(queue, name, d, o)
		return e
	})
	return id, err
}

// WaitForChildren waits for this job's pending children. waiting is true
// when the job now waits for them: return the [Moved] outcome it gives, and
// the job runs again once they have finished. false: none is pending,
// carry on.
//
//	if out, waiting, err := job.WaitForChildren(); err != nil || waiting {
//		return out, err
//	}
func (j *Job) WaitForChildren() (out Outcome, waiting bool, err error) {
	err = callHost(func(h hostImports) (e error) {
		waiting, e = h.waitForChildren()
		return e
	})
	if err != nil || !waiting {
		return Outcome{}, false, err
	}
	return Moved, true, nil
}

// ChildValue is the return value of one completed child.
type ChildValue struct {
	// Key is the child's key, `prefix:queue:id`.
	Key string
	// Value is its return value as JSON text (valid JSON).
	Value json.RawMessage
}

// ChildrenValues returns the return values of this job's completed
// children, in the host's order.
func (j *Job) ChildrenValues() ([]ChildValue, error) {
	var raw []rawChild
	if err := callHost(func(h hostImports) (e error) {
		raw, e = h.childrenValues()
		return e
	}); err != nil {
		return nil, err
	}
	out := make([]ChildValue, len(raw))
	for i, c := range raw {
		if !json.Valid([]byte(c.value)) {
			var v any
			return nil, invalidJSON(json.Unmarshal([]byte(c.value), &v))
		}
		out[i] = ChildValue{Key: c.key, Value: json.RawMessage(c.value)}
	}
	return out, nil
}

// Outcome is how a successful attempt ended: completed with a return value
// ([Complete], [CompleteJSON]) or [Moved] by a host call.
type Outcome struct {
	set   bool
	moved bool
	json  string
}

// Moved is the outcome of an attempt whose job a host call already moved
// ([Job.DelayUntil], [Job.WaitForChildren]).
var Moved = Outcome{set: true, moved: true}

// Complete completes the job with v encoded as JSON as its return value.
func Complete(v any) (Outcome, error) {
	text, err := marshal(v)
	if err != nil {
		return Outcome{}, Unrecoverable("return value is not serialisable: " + err.Error())
	}
	return Outcome{set: true, json: text}, nil
}

// CompleteJSON completes the job with a return value that is already JSON
// text.
func CompleteJSON(text string) Outcome {
	return Outcome{set: true, json: text}
}

// IsMoved reports whether this is the [Moved] outcome.
func (o Outcome) IsMoved() bool { return o.moved }

// JSON is the return value of a completed outcome, and whether it is one.
func (o Outcome) JSON() (string, bool) { return o.json, o.set && !o.moved }

// marshal encodes v as JSON text without HTML escaping (as Rust's
// serde_json and Node's JSON.stringify write it).
func marshal(v any) (string, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return string(bytes.TrimSuffix(b.Bytes(), []byte("\n"))), nil
}

// hostImports is the job-context interface (one method per WIT function).
type hostImports interface {
	updateData(data string) error
	updateProgress(progress string) error
	log(line string) error
	moveToDelayed(timestampMs uint64) error
	rateLimit(delayMs uint64) error
	moveToWait() error
	addChild(queue, name, data, opts string) (string, error)
	waitForChildren() (bool, error)
	childrenValues() ([]rawChild, error)
	setStacktrace(stack string)
}

// host is the job context: the component's imports on wasip1, a stand-in
// elsewhere (and in tests).
var (
	host   hostImports
	hostMu sync.Mutex
)

// callHost serialises host calls: goroutines share one arena.
func callHost(f func(hostImports) error) error {
	hostMu.Lock()
	defer hostMu.Unlock()
	return f(host)
}
