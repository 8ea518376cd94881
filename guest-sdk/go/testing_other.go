//go:build !wasip1

package guest

import "bullpen.dev/guest/internal/testhook"

// guesttest's runs: the processor against its in-memory job context.
func init() { testhook.Run = runForTest }

// hookHost is a guesttest job context as the SDK's host.
type hookHost struct{ h testhook.Host }

func (h hookHost) updateData(d string) error                  { return h.h.UpdateData(d) }
func (h hookHost) updateProgress(p string) error              { return h.h.UpdateProgress(p) }
func (h hookHost) log(l string) error                         { return h.h.Log(l) }
func (h hookHost) moveToDelayed(ts uint64) error              { return h.h.MoveToDelayed(ts) }
func (h hookHost) rateLimit(ms uint64) error                  { return h.h.RateLimit(ms) }
func (h hookHost) moveToWait() error                          { return h.h.MoveToWait() }
func (h hookHost) addChild(q, n, d, o string) (string, error) { return h.h.AddChild(q, n, d, o) }
func (h hookHost) waitForChildren() (bool, error)             { return h.h.WaitForChildren() }
func (h hookHost) setStacktrace(s string)                     { h.h.SetStacktrace(s) }
func (h hookHost) childrenValues() ([]rawChild, error) {
	pairs, err := h.h.ChildrenValues()
	out := make([]rawChild, len(pairs))
	for i, p := range pairs {
		out[i] = rawChild{key: p[0], value: p[1]}
	}
	return out, err
}

func runForTest(h testhook.Host, j testhook.Job, process any) testhook.Result {
	hostMu.Lock()
	oldHost, oldRegistered := host, registered
	host = hookHost{h}
	hostMu.Unlock()
	registered = exported{process: process.(Processor)}
	defer func() {
		hostMu.Lock()
		host, registered = oldHost, oldRegistered
		hostMu.Unlock()
	}()
	r := runProcess(&Job{
		id: j.ID, name: j.Name, queue: j.Queue, data: j.Data, opts: j.Opts,
		attemptsMade: j.AttemptsMade, attemptsStarted: j.AttemptsStarted,
		timestamp: j.Timestamp, progress: j.Progress,
	})
	kinds := map[failureKind]string{failRetry: "retry", failRetryAfter: "retry-after", failUnrecoverable: "unrecoverable"}
	return testhook.Result{OK: r.ok, Moved: r.moved, JSON: r.json, Kind: kinds[r.kind], Reason: r.reason, DelayMs: r.delayMs}
}

// storeGet answers from a guesttest job's variables; elsewhere outside a
// bullpen host there is no store.
func storeGet(name string) (configGet, error) {
	hostMu.Lock()
	h, ok := host.(hookHost)
	hostMu.Unlock()
	if !ok {
		return configGet{}, errNoHost
	}
	v, found := h.h.Variable(name)
	return configGet{value: v, found: found}, nil
}
