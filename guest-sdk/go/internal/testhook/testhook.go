// Package testhook connects package guest to package guesttest without
// making guest's internals public: guest sets Run (outside wasip1), and
// guesttest calls it with its in-memory job context.
package testhook

// Host is the job context a test run answers from, one method per
// job-context function (plus the queue's variables).
type Host interface {
	UpdateData(data string) error
	UpdateProgress(progress string) error
	Log(line string) error
	MoveToDelayed(timestampMs uint64) error
	RateLimit(delayMs uint64) error
	MoveToWait() error
	AddChild(queue, name, data, opts string) (string, error)
	WaitForChildren() (bool, error)
	ChildrenValues() ([][2]string, error)
	SetStacktrace(stack string)
	Variable(name string) (value string, found bool)
}

// Job is the WIT job record.
type Job struct {
	ID, Name, Queue, Data, Opts   string
	AttemptsMade, AttemptsStarted uint32
	Timestamp                     uint64
	Progress                      string
}

// Result is the WIT `result<outcome, failure>`.
type Result struct {
	OK, Moved bool
	JSON      string
	// Kind: "retry", "retry-after" or "unrecoverable" when !OK.
	Kind    string
	Reason  string
	DelayMs uint64
}

// Run runs process (a guest.Processor) once on job against host.
var Run func(host Host, job Job, process any) Result
