// Package guesttest unit-tests a bullpen processor with plain `go test` on
// the build machine: no Redis, no WebAssembly. A [TestJob] is a job built
// from JSON data (and, optionally, its name, id, attempts made, options,
// variables and children's values); [TestJob.Run] runs the processor once
// against an in-memory job context and returns a [TestRun]: the Outcome
// and the host calls the processor made, named by their WIT functions
// (update-data, update-progress, log, move-to-delayed, rate-limit,
// move-to-wait, add-child, wait-for-children, children-values).
//
//	run := guesttest.New(`{"to":"a@b.c"}`).Run(process)
//	if run.Outcome.Kind != guesttest.Completed { t.Fatal(run.Outcome) }
//
// The in-memory job answers as `bullpen run` does: update-data changes
// [TestRun.Data], a move ends the attempt (a second one is refused with
// wrong-state), wait-for-children is true when children were added in this
// run or [TestJob.PendingChildren] is set. Outbound HTTP is not available.
package guesttest

import (
	"encoding/json"
	"fmt"

	"bullpen.dev/guest"
	"bullpen.dev/guest/internal/testhook"
)

// TestJob is a job to run a processor on. Make one with [New] and change
// its fields before Run.
type TestJob struct {
	Data, Name, ID, Queue string
	// Opts is the job options as JSON text (BullMQ field names).
	Opts string
	// AttemptsMade counts the attempts before this one; attemptsStarted is one more.
	AttemptsMade uint32
	// Variables are the queue's variables (guest.Variable).
	Variables map[string]string
	// ChildrenValues is what children-values returns: child key → return value JSON.
	ChildrenValues map[string]string
	// PendingChildren: children of an earlier attempt are still pending,
	// so wait-for-children answers true.
	PendingChildren bool
}

// New is a job with this data (JSON text), named "test", id "1", queue
// "test", on its first attempt.
func New(dataJSON string) *TestJob {
	return &TestJob{Data: dataJSON, Name: "test", ID: "1", Queue: "test", Opts: "{}"}
}

// Outcome kinds.
const (
	Completed = "completed"
	Failed    = "failed"
	Moved     = "moved"
)

// Outcome is how the attempt ended.
type Outcome struct {
	// Kind is Completed, Failed or Moved.
	Kind string
	// Value is the return value as JSON text (Completed).
	Value string
	// Failure is "retry", "retry-after" or "unrecoverable" (Failed).
	Failure string
	// Reason is the failedReason (Failed).
	Reason string
	// DelayMs is the delay a retry-after asked for.
	DelayMs uint64
	// Stack is the job's stacktrace entry the SDK sent (Failed).
	Stack string
	// To is where a move sent the job: "delayed", "wait" or "waiting-children" (Moved).
	To string
}

// Call is one host call: its WIT function name and its arguments in WIT
// order (JSON-text arguments decoded, as encoding/json decodes into any).
type Call struct {
	Name string
	Args []any
}

// TestRun is what one run did.
type TestRun struct {
	Outcome Outcome
	Calls   []Call
	// Data is the job data at the end, as update-data left it.
	Data string
}

// Named is the calls named name, in order.
func (r *TestRun) Named(name string) []Call {
	var out []Call
	for _, c := range r.Calls {
		if c.Name == name {
			out = append(out, c)
		}
	}
	return out
}

// Logs is the lines the processor logged.
func (r *TestRun) Logs() []string {
	var out []string
	for _, c := range r.Named("log") {
		out = append(out, c.Args[0].(string))
	}
	return out
}

// Run runs process once on the job.
func (j *TestJob) Run(process guest.Processor) *TestRun {
	h := &memHost{job: j, data: j.Data}
	r := testhook.Run(h, testhook.Job{
		ID: j.ID, Name: j.Name, Queue: j.Queue, Data: j.Data, Opts: j.Opts,
		AttemptsMade: j.AttemptsMade, AttemptsStarted: j.AttemptsMade + 1, Progress: "0",
	}, process)
	run := &TestRun{Calls: h.calls, Data: h.data}
	switch {
	case r.OK && r.Moved && h.moved != "":
		run.Outcome = Outcome{Kind: Moved, To: h.moved}
	case r.OK && r.Moved:
		run.Outcome = Outcome{Kind: Failed, Failure: "retry", Reason: "processor returned `moved` but no host call moved the job"}
	case r.OK:
		run.Outcome = Outcome{Kind: Completed, Value: r.JSON}
	default:
		run.Outcome = Outcome{Kind: Failed, Failure: r.Kind, Reason: r.Reason, DelayMs: r.DelayMs, Stack: h.stack}
	}
	return run
}

// memHost is the in-memory job context.
type memHost struct {
	job      *TestJob
	data     string
	calls    []Call
	moved    string
	children int
	stack    string
}

func decode(text string) (any, error) {
	var v any
	if err := json.Unmarshal([]byte(text), &v); err != nil {
		return nil, &guest.HostError{Kind: guest.Invalid, Message: "not valid JSON: " + err.Error()}
	}
	return v, nil
}

func (h *memHost) record(name string, args ...any) {
	h.calls = append(h.calls, Call{Name: name, Args: args})
}

func (h *memHost) move(to string) error {
	if h.moved != "" {
		return &guest.HostError{Kind: guest.WrongState, Message: "the job was already moved in this attempt"}
	}
	h.moved = to
	return nil
}

func (h *memHost) UpdateData(data string) error {
	v, err := decode(data)
	if err != nil {
		return err
	}
	h.record("update-data", v)
	h.data = data
	return nil
}

func (h *memHost) UpdateProgress(progress string) error {
	v, err := decode(progress)
	if err != nil {
		return err
	}
	h.record("update-progress", v)
	return nil
}

func (h *memHost) Log(line string) error { h.record("log", line); return nil }

func (h *memHost) MoveToDelayed(ts uint64) error {
	h.record("move-to-delayed", ts)
	return h.move("delayed")
}

func (h *memHost) RateLimit(ms uint64) error {
	h.record("rate-limit", ms)
	if ms == 0 {
		return &guest.HostError{Kind: guest.Invalid, Message: "rate-limit delay-ms is 0; it must be at least 1"}
	}
	return h.move("wait")
}

func (h *memHost) MoveToWait() error {
	h.record("move-to-wait")
	return h.move("wait")
}

func (h *memHost) AddChild(queue, name, data, opts string) (string, error) {
	d, err := decode(data)
	if err != nil {
		return "", err
	}
	var o any
	if opts != "" {
		if o, err = decode(opts); err != nil {
			return "", err
		}
	}
	h.record("add-child", queue, name, d, o)
	h.children++
	if m, ok := o.(map[string]any); ok {
		if id, ok := m["jobId"].(string); ok {
			return id, nil
		}
	}
	return fmt.Sprintf("child-%d", h.children), nil
}

func (h *memHost) WaitForChildren() (bool, error) {
	h.record("wait-for-children")
	if h.children == 0 && !h.job.PendingChildren {
		return false, nil
	}
	return true, h.move("waiting-children")
}

func (h *memHost) ChildrenValues() ([][2]string, error) {
	h.record("children-values")
	var out [][2]string
	for k, v := range h.job.ChildrenValues {
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

func (h *memHost) SetStacktrace(stack string) { h.stack = stack }

func (h *memHost) Variable(name string) (string, bool) {
	v, ok := h.job.Variables[name]
	return v, ok
}
