package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// testArena has 256 bytes of scratch (so tests cover both it and Go heap
// blocks) and gives buffers made-up addresses, 16-aligned and apart, as a
// 32-bit linear memory would.
func testArena() *arena {
	next := uint32(0x1000)
	a := newArena(make([]byte, 256), func(b []byte) uint32 {
		a := next
		next += (uint32(len(b)) + 31) &^ 15
		return a
	})
	return &a
}

// put writes a string the way the host lowers one: realloc, copy, and the
// (ptr, len) pair at off of buf.
func put(t *testing.T, a *arena, buf []byte, off int, s string) {
	t.Helper()
	ptr := a.realloc(0, 0, 1, uint32(len(s)))
	if len(s) > 0 {
		b, err := a.load(ptr, uint32(len(s)))
		if err != nil {
			t.Fatal(err)
		}
		copy(b, s)
	}
	binary.LittleEndian.PutUint32(buf[off:], ptr)
	binary.LittleEndian.PutUint32(buf[off+4:], uint32(len(s)))
}

func newBlock(t *testing.T, a *arena, size, align uint32) (uint32, []byte) {
	t.Helper()
	ptr := a.realloc(0, 0, align, size)
	if ptr%align != 0 {
		t.Fatalf("realloc gave %#x, not %d-aligned", ptr, align)
	}
	b, err := a.load(ptr, size)
	if err != nil {
		t.Fatal(err)
	}
	return ptr, b
}

// writeJob lays out the WIT `job` record at off (offsets from the
// canonical ABI: strings 8 bytes, u64 8-aligned, option tag + 4-aligned payload).
func writeJob(t *testing.T, a *arena, buf []byte, off int, parent bool) {
	put(t, a, buf, off+0, "42")
	put(t, a, buf, off+8, "welcome")
	put(t, a, buf, off+16, "emails")
	put(t, a, buf, off+24, `{"to":"ada@example.com","n":"日本"}`)
	put(t, a, buf, off+32, `{"attempts":3}`)
	binary.LittleEndian.PutUint32(buf[off+40:], 2)
	binary.LittleEndian.PutUint32(buf[off+44:], 5)
	binary.LittleEndian.PutUint64(buf[off+48:], 1795630399106)
	put(t, a, buf, off+56, "")
	if parent {
		buf[off+64] = 1
		put(t, a, buf, off+68, "p-1")
		put(t, a, buf, off+76, "parents")
	}
}

func wantJob(parent bool) *Job {
	j := &Job{id: "42", name: "welcome", queue: "emails", data: `{"to":"ada@example.com","n":"日本"}`, opts: `{"attempts":3}`,
		attemptsMade: 2, attemptsStarted: 5, timestamp: 1795630399106, progress: ""}
	if parent {
		j.parent = &ParentRef{ID: "p-1", Queue: "parents"}
	}
	return j
}

func TestLiftJob(t *testing.T) {
	for _, parent := range []bool{false, true} {
		a := testArena()
		ptr, buf := newBlock(t, a, 88, 8)
		writeJob(t, a, buf, 0, parent)
		got, err := liftJob(a, ptr)
		if err != nil {
			t.Fatal(err)
		}
		if want := wantJob(parent); !reflect.DeepEqual(got, want) {
			t.Errorf("parent=%v: got %+v want %+v", parent, got, want)
		}
	}
}

func TestLiftJobRejectsBadPointersAndTags(t *testing.T) {
	a := testArena()
	ptr, buf := newBlock(t, a, 88, 8)
	writeJob(t, a, buf, 0, false)
	buf[64] = 7
	if _, err := liftJob(a, ptr); err == nil {
		t.Error("option tag 7 accepted")
	}
	binary.LittleEndian.PutUint32(buf[0:], 0xdead0000)
	buf[64] = 0
	if _, err := liftJob(a, ptr); err == nil {
		t.Error("string outside the guest's allocations accepted")
	}
	if _, err := liftJob(a, 0x9999); err == nil {
		t.Error("job pointer outside the guest's allocations accepted")
	}
}

func TestLiftBackoffParams(t *testing.T) {
	a := testArena()
	ptr, buf := newBlock(t, a, 112, 8)
	put(t, a, buf, 0, "linear")
	binary.LittleEndian.PutUint32(buf[8:], 3)
	put(t, a, buf, 12, "flaky: failing attempt 3 of 5")
	writeJob(t, a, buf, 24, true)
	p, err := liftBackoffParams(a, ptr)
	if err != nil {
		t.Fatal(err)
	}
	want := backoffParams{strategy: "linear", attemptsMade: 3, reason: "flaky: failing attempt 3 of 5", job: wantJob(true)}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("got %+v want %+v", p, want)
	}
}

// readString follows a lowered (ptr, len) pair.
func readString(t *testing.T, a *arena, buf []byte, off int) string {
	t.Helper()
	ptr, n := binary.LittleEndian.Uint32(buf[off:]), binary.LittleEndian.Uint32(buf[off+4:])
	b, err := a.load(ptr, n)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestLowerProcessResult(t *testing.T) {
	a := testArena()
	load := func(ret uint32) []byte {
		if ret%8 != 0 {
			t.Fatalf("return area %#x not 8-aligned", ret)
		}
		b, err := a.load(ret, 32)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := load(lowerProcessResult(a, processResult{ok: true, json: `{"ok":true}`}))
	if b[0] != 0 || b[8] != 0 || readString(t, a, b, 12) != `{"ok":true}` {
		t.Errorf("completed: % x", b)
	}
	b = load(lowerProcessResult(a, processResult{ok: true, moved: true}))
	if b[0] != 0 || b[8] != 1 {
		t.Errorf("moved: % x", b)
	}
	b = load(lowerProcessResult(a, processResult{kind: failRetry, reason: "again"}))
	if b[0] != 1 || b[8] != 0 || readString(t, a, b, 16) != "again" {
		t.Errorf("retry: % x", b)
	}
	b = load(lowerProcessResult(a, processResult{kind: failRetryAfter, reason: "later", delayMs: 1500}))
	if b[0] != 1 || b[8] != 1 || readString(t, a, b, 16) != "later" || binary.LittleEndian.Uint64(b[24:]) != 1500 {
		t.Errorf("retry-after: % x", b)
	}
	b = load(lowerProcessResult(a, processResult{kind: failUnrecoverable, reason: ""}))
	if b[0] != 1 || b[8] != 2 || readString(t, a, b, 16) != "" {
		t.Errorf("unrecoverable: % x", b)
	}
}

func TestLowerBackoff(t *testing.T) {
	a := testArena()
	ret := lowerBackoff(a, DelayMs(900))
	b, _ := a.load(ret, 16)
	if b[0] != 0 || binary.LittleEndian.Uint64(b[8:]) != 900 {
		t.Errorf("delay-ms: % x", b)
	}
	ret = lowerBackoff(a, GiveUp)
	b, _ = a.load(ret, 16)
	if b[0] != 1 {
		t.Errorf("give-up: % x", b)
	}
}

// importRet makes an import's return area as the host fills it.
func importRet(t *testing.T, a *arena, fill func(b []byte)) uint32 {
	ptr, b := newBlock(t, a, 16, 4)
	fill(b)
	return ptr
}

func errRet(t *testing.T, a *arena, tag uint8, msg string) uint32 {
	return importRet(t, a, func(b []byte) {
		b[0], b[4] = 1, tag
		put(t, a, b, 8, msg)
	})
}

func TestLiftImportResults(t *testing.T) {
	a := testArena()
	if err := liftUnitResult(a, importRet(t, a, func(b []byte) {})); err != nil {
		t.Errorf("ok: %v", err)
	}
	for tag, want := range []*HostError{
		{Kind: LockLost}, {Kind: WrongState, Message: "not active"}, {Kind: Invalid, Message: "not JSON"}, {Kind: Unavailable, Message: "redis down"},
	} {
		err := liftUnitResult(a, errRet(t, a, uint8(tag), want.Message))
		if !reflect.DeepEqual(err, want) {
			t.Errorf("tag %d: got %#v want %#v", tag, err, want)
		}
	}
	if err := liftUnitResult(a, errRet(t, a, 9, "")); err == nil || !errors.As(err, new(*HostError)) {
		t.Errorf("bad job-error tag: %v", err)
	}

	id, err := liftStringResult(a, importRet(t, a, func(b []byte) { put(t, a, b, 4, "42-child-1") }))
	if id != "42-child-1" || err != nil {
		t.Errorf("add-child ok: %q %v", id, err)
	}
	if _, err := liftStringResult(a, errRet(t, a, 2, "queue not allowed")); err.Error() != "invalid argument: queue not allowed" {
		t.Errorf("add-child err: %v", err)
	}

	for _, v := range []bool{false, true} {
		got, err := liftBoolResult(a, importRet(t, a, func(b []byte) {
			if v {
				b[4] = 1
			}
		}))
		if got != v || err != nil {
			t.Errorf("wait-for-children %v: %v %v", v, got, err)
		}
	}
	if _, err := liftBoolResult(a, errRet(t, a, 0, "")); !IsLockLost(err) {
		t.Errorf("wait-for-children lock lost: %v", err)
	}

	kids, err := liftChildrenResult(a, importRet(t, a, func(b []byte) {
		lp, lb := newBlock(t, a, 32, 4)
		put(t, a, lb, 0, "bull:k:1")
		put(t, a, lb, 8, `{"a":1}`)
		put(t, a, lb, 16, "bull:k:2")
		put(t, a, lb, 24, `2`)
		binary.LittleEndian.PutUint32(b[4:], lp)
		binary.LittleEndian.PutUint32(b[8:], 2)
	}))
	if want := []rawChild{{"bull:k:1", `{"a":1}`}, {"bull:k:2", "2"}}; err != nil || !reflect.DeepEqual(kids, want) {
		t.Errorf("children-values: %v %v", kids, err)
	}
	kids, err = liftChildrenResult(a, importRet(t, a, func(b []byte) { binary.LittleEndian.PutUint32(b[4:], 4) }))
	if err != nil || len(kids) != 0 {
		t.Errorf("no children: %v %v", kids, err)
	}
}

func TestReallocUsesScratchFirstAndReusesIt(t *testing.T) {
	a := testArena()
	p := a.realloc(0, 0, 1, 3)
	if p != a.base || a.used != 3 || len(a.blocks) != 0 {
		t.Fatalf("first allocation %#x (scratch at %#x, used %d, %d blocks)", p, a.base, a.used, len(a.blocks))
	}
	q := a.realloc(0, 0, 8, 16)
	if q != a.base+8 || a.used != 24 {
		t.Errorf("aligned allocation %#x, used %d", q, a.used)
	}
	// Growing the last allocation extends it in place.
	b, _ := a.load(q, 16)
	copy(b, "0123456789abcdef")
	if r := a.realloc(q, 16, 8, 40); r != q || a.used != 48 {
		t.Errorf("grown in place: %#x, used %d", r, a.used)
	}
	// Too big for what is left: a Go heap block, the contents copied.
	big := a.realloc(q, 40, 8, 300)
	if big < a.base+256 && big >= a.base || len(a.blocks) != 1 || big%8 != 0 {
		t.Fatalf("big allocation %#x in scratch (%d blocks)", big, len(a.blocks))
	}
	c, err := a.load(big, 300)
	if err != nil || string(c[:16]) != "0123456789abcdef" {
		t.Errorf("moved contents: %q %v", c[:16], err)
	}
	// After a reset the same scratch is handed out again.
	a.reset()
	if _, err := a.load(q, 1); err == nil {
		t.Error("scratch readable after reset")
	}
	if p2 := a.realloc(0, 0, 1, 200); p2 != a.base || len(a.blocks) != 0 {
		t.Errorf("after reset: %#x, %d blocks", p2, len(a.blocks))
	}
	if p3 := a.realloc(0, 0, 1, 100); p3 == 0 || len(a.blocks) != 1 {
		t.Errorf("the rest did not fit: %#x, %d blocks", p3, len(a.blocks))
	}
}

func TestLockLostIgnoresStaleBytes(t *testing.T) {
	a := testArena()
	// A return area whose message slot holds a previous call's pointer.
	ret := importRet(t, a, func(b []byte) {
		b[0], b[4] = 1, 0
		binary.LittleEndian.PutUint32(b[8:], 0xdead0000)
		binary.LittleEndian.PutUint32(b[12:], 99)
	})
	if err := liftUnitResult(a, ret); !IsLockLost(err) {
		t.Errorf("got %v", err)
	}
	// scratchAlloc zeroes what it hands out again.
	a.reset()
	p := a.scratchAlloc(importResultSize, 4)
	b, _ := a.load(p, importResultSize)
	for i, x := range b {
		if x != 0 {
			t.Fatalf("byte %d of a reused return area is %#x", i, x)
		}
	}
}

func TestReallocAndReset(t *testing.T) {
	a := testArena()
	p := a.realloc(0, 0, 1, 5)
	b, _ := a.load(p, 5)
	copy(b, "hello")
	q := a.realloc(p, 5, 1, 8)
	c, _ := a.load(q, 8)
	if string(c[:5]) != "hello" {
		t.Errorf("realloc lost the contents: %q", c)
	}
	if z := a.realloc(0, 0, 8, 0); z != 8 {
		t.Errorf("empty allocation: %#x", z)
	}
	a.reset()
	if _, err := a.load(q, 1); err == nil {
		t.Error("load after reset")
	}
}

// recordingHost answers every call and records it.
type recordingHost struct {
	calls    []string
	err      error
	waiting  bool
	children []rawChild
}

func (h *recordingHost) rec(s string) error            { h.calls = append(h.calls, s); return h.err }
func (h *recordingHost) updateData(d string) error     { return h.rec("update-data " + d) }
func (h *recordingHost) updateProgress(p string) error { return h.rec("update-progress " + p) }
func (h *recordingHost) log(l string) error            { return h.rec("log " + l) }
func (h *recordingHost) moveToDelayed(ts uint64) error {
	return h.rec(fmt.Sprintf("move-to-delayed %d", ts))
}
func (h *recordingHost) rateLimit(ms uint64) error { return h.rec(fmt.Sprintf("rate-limit %d", ms)) }
func (h *recordingHost) moveToWait() error         { return h.rec("move-to-wait") }
func (h *recordingHost) addChild(q, n, d, o string) (string, error) {
	return "child-id", h.rec(fmt.Sprintf("add-child %s %s %s %q", q, n, d, o))
}
func (h *recordingHost) waitForChildren() (bool, error) { return h.waiting, h.rec("wait-for-children") }
func (h *recordingHost) childrenValues() ([]rawChild, error) {
	return h.children, h.rec("children-values")
}
func (h *recordingHost) setStacktrace(s string) { _ = h.rec("set-stacktrace " + s) }

func withHost(t *testing.T, h hostImports) {
	old := host
	host = h
	t.Cleanup(func() { host = old })
}

func TestJobCallsTheHost(t *testing.T) {
	h := &recordingHost{}
	withHost(t, h)
	j := wantJob(false)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(j.UpdateData(map[string]any{"step": "Second", "html": "<b>"}))
	must(j.Progress(100))
	must(j.Log("hello"))
	out, err := j.DelayUntil(1234)
	must(err)
	if !out.IsMoved() {
		t.Error("DelayUntil should give Moved")
	}
	if out, err = j.RateLimit(500); err != nil || !out.IsMoved() {
		t.Errorf("RateLimit should give Moved: %v", err)
	}
	if out, err = j.MoveToWait(); err != nil || !out.IsMoved() {
		t.Errorf("MoveToWait should give Moved: %v", err)
	}
	id, err := j.AddChild("kids", "child", map[string]int{"child": 1}, map[string]string{"jobId": "42-child-1"})
	must(err)
	if id != "child-id" {
		t.Errorf("child id %q", id)
	}
	_, err = j.AddChild("kids", "child", 1, nil)
	must(err)
	out, waiting, err := j.WaitForChildren()
	must(err)
	if waiting || out.IsMoved() {
		t.Error("no children pending: carry on")
	}
	h.waiting = true
	out, waiting, err = j.WaitForChildren()
	must(err)
	if !waiting || !out.IsMoved() {
		t.Error("children pending: Moved")
	}
	want := []string{
		`update-data {"html":"<b>","step":"Second"}`,
		"update-progress 100",
		"log hello",
		"move-to-delayed 1234",
		"rate-limit 500",
		"move-to-wait",
		`add-child kids child {"child":1} "{\"jobId\":\"42-child-1\"}"`,
		`add-child kids child 1 ""`,
		"wait-for-children",
		"wait-for-children",
	}
	if !reflect.DeepEqual(h.calls, want) {
		t.Errorf("calls:\n%q\nwant\n%q", h.calls, want)
	}

	h.children = []rawChild{{"bull:k:1", `{"b":2,"a":1}`}}
	kids, err := j.ChildrenValues()
	must(err)
	if len(kids) != 1 || kids[0].Key != "bull:k:1" || string(kids[0].Value) != `{"b":2,"a":1}` {
		t.Errorf("children %v", kids)
	}
	h.children = []rawChild{{"bull:k:1", `{oops`}}
	if _, err := j.ChildrenValues(); !isUnrecoverable(err) {
		t.Errorf("bad child JSON: %v", err)
	}
}

func isUnrecoverable(err error) bool {
	var f *JobError
	return errors.As(err, &f) && f.IsUnrecoverable()
}

func TestHostErrorsComeBackAndFailRetryably(t *testing.T) {
	withHost(t, &recordingHost{err: &HostError{Kind: LockLost}})
	j := wantJob(false)
	err := j.Log("x")
	if !IsLockLost(err) {
		t.Fatalf("got %v", err)
	}
	r := toResult(Outcome{}, err)
	if r.ok || r.kind != failRetry || r.reason != "lock lost: this worker no longer owns the job" {
		t.Errorf("lock lost from process: %+v", r)
	}
	r = toResult(j.DelayUntil(5))
	if r.ok || r.kind != failRetry {
		t.Errorf("failed DelayUntil: %+v", r)
	}
	for name, r := range map[string]processResult{"RateLimit": toResult(j.RateLimit(5)), "MoveToWait": toResult(j.MoveToWait())} {
		if r.ok || r.kind != failRetry {
			t.Errorf("failed %s: %+v", name, r)
		}
	}
	r = toResult(Outcome{}, fmt.Errorf("step 2: %w", &HostError{Kind: Unavailable, Message: "redis down"}))
	if r.kind != failRetry || r.reason != "step 2: host unavailable: redis down" {
		t.Errorf("wrapped host error: %+v", r)
	}
}

func TestDataAndOutcomes(t *testing.T) {
	j := &Job{data: `{"failTimes":2}`}
	var d struct {
		FailTimes uint32 `json:"failTimes"`
	}
	if err := j.Data(&d); err != nil || d.FailTimes != 2 {
		t.Errorf("Data: %v %+v", err, d)
	}
	j.data = `{"failTimes":-1}`
	err := j.Data(&d)
	if !isUnrecoverable(err) || !strings.HasPrefix(err.Error(), "unexpected JSON shape:") {
		t.Errorf("data of another shape: %v", err)
	}
	j.data = `{"failTimes":`
	err = j.Data(&d)
	if !isUnrecoverable(err) || !strings.HasPrefix(err.Error(), "invalid JSON:") {
		t.Errorf("data that is not JSON: %v", err)
	}

	cases := []struct {
		out  Outcome
		err  error
		want processResult
	}{
		{CompleteJSON(`{"a":1}`), nil, processResult{ok: true, json: `{"a":1}`}},
		{Moved, nil, processResult{ok: true, moved: true}},
		{Outcome{}, Retry("again"), processResult{kind: failRetry, reason: "again"}},
		{Outcome{}, RetryAfter("later", 1500), processResult{kind: failRetryAfter, reason: "later", delayMs: 1500}},
		{Outcome{}, Unrecoverable("fatal"), processResult{kind: failUnrecoverable, reason: "fatal"}},
		{Outcome{}, fmt.Errorf("charging: %w", Unrecoverable("card declined")), processResult{kind: failUnrecoverable, reason: "charging: card declined"}},
		{Outcome{}, errors.New("plain"), processResult{kind: failRetry, reason: "plain"}},
	}
	for i, c := range cases {
		if got := toResult(c.out, c.err); got != c.want {
			t.Errorf("%d: got %+v want %+v", i, got, c.want)
		}
	}
	if r := toResult(Outcome{}, nil); r.ok || r.kind != failUnrecoverable {
		t.Errorf("zero outcome: %+v", r)
	}
	out, err := Complete(map[string]any{"b": "<&>", "a": 1})
	if s, ok := out.JSON(); err != nil || !ok || s != `{"a":1,"b":"<&>"}` {
		t.Errorf("Complete: %q %v", s, err)
	}
	if _, err := Complete(func() {}); !isUnrecoverable(err) {
		t.Errorf("unserialisable: %v", err)
	}
}

func TestProcessAndBackoffRegistration(t *testing.T) {
	old := registered
	t.Cleanup(func() { registered = old })
	registered = exported{}
	if r := runProcess(&Job{}); r.kind != failUnrecoverable {
		t.Errorf("nothing registered: %+v", r)
	}
	if b := runBackoff(backoffParams{}); b != DelayMs(0) {
		t.Errorf("no backoff: %+v", b)
	}
	ExportProcessor(func(j *Job) (Outcome, error) { return CompleteJSON(j.DataJSON()), nil },
		WithBackoff(func(s string, n uint32, reason string, j *Job) Backoff {
			if s == "never" {
				return GiveUp
			}
			return DelayMs(300 * uint64(n))
		}))
	if r := runProcess(&Job{data: "[1]"}); !r.ok || r.json != "[1]" {
		t.Errorf("process: %+v", r)
	}
	if b := runBackoff(backoffParams{strategy: "linear", attemptsMade: 2}); b.IsGiveUp() || b.Delay() != 600 {
		t.Errorf("linear: %+v", b)
	}
	if b := runBackoff(backoffParams{strategy: "never"}); !b.IsGiveUp() {
		t.Errorf("never: %+v", b)
	}
}

func TestPanicTraps(t *testing.T) {
	old := registered
	t.Cleanup(func() { registered = old })
	ExportProcessor(func(*Job) (Outcome, error) { panic("flaky: asked to panic on attempt 1") })
	defer func() {
		if v := recover(); v != "bullpen guest: trap" {
			t.Errorf("recovered %v, want the trap", v)
		}
	}()
	runProcess(&Job{})
	t.Error("a panicking processor returned")
}
