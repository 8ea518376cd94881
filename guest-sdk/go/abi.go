package guest

// The canonical ABI of wit/processor.wit, by hand: Go's own compiler
// (GOOS=wasip1, //go:wasmexport, //go:wasmimport) has no component-model
// bindings generator (wit-bindgen-go needs TinyGo, whose strings and
// pointers are 32-bit; mainline Go's are 64-bit), and the world is small.
//
// Everything here is plain Go over an [arena] of guest memory, so the
// layouts are unit-tested on any platform (abi_test.go); abi_wasip1.go only
// adds the imports, the exports, the real addresses and the collector's
// stops around the times the host may call cabi_realloc.
//
// Layouts (little-endian, offsets in bytes; a string is ptr u32 + len u32):
//
//	job (size 88, align 8): id 0, name 8, queue 16, data 24, opts 32,
//	  attempts-made 40, attempts-started 44, timestamp 48 (u64),
//	  progress 56, parent option 64 (u8 tag; id 68, queue 76)
//	process params: a job at the pointer (flat params 20 > 16)
//	backoff params (size 112): strategy 0, attempts-made 8, reason 12, job 24
//	result<outcome, failure> (size 32): tag 0; payload 8:
//	  outcome: tag 8 (0 completed, 1 moved), json 12
//	  failure: tag 8 (0 retry, 1 retry-after, 2 unrecoverable), reason 16,
//	           delay-ms 24 (u64, retry-after only)
//	backoff-decision (size 16): tag 0 (0 delay-ms, 1 give-up), delay-ms 8
//	result<T, job-error> of an import (size 16): tag 0; payload 4:
//	  ok: string 4 | bool 4 (u8) | list 4 (ptr, len; elements 16 bytes:
//	      key string 0, value string 8)
//	  err job-error: tag 4 (0 lock-lost, 1 wrong-state, 2 invalid,
//	      3 unavailable), message string 8

import (
	"encoding/binary"
	"fmt"
)

// Sizes and alignments of the return areas and parameter blocks above.
const (
	jobSize           = 88
	backoffParamsSize = 112
	processResultSize = 32
	backoffResultSize = 16
	importResultSize  = 16
)

// A block of guest memory from the Go heap, kept reachable until the host
// is done with it.
type block struct {
	addr uint32
	buf  []byte
}

// arena is the guest memory the host reads and writes outside Go's view:
// what cabi_realloc hands out, the return areas of imports and the results
// lowered for exports.
//
// cabi_realloc runs inside a host call with the component model's
// may-leave flag clear: any WASI call in it traps (`cannot leave component
// instance`). A Go allocation can start a GC cycle, and the collector makes
// WASI calls (the clock, the scheduler's poll), so realloc first bump-
// allocates from scratch, memory that is not the Go heap (on wasm a static
// array: fixed address, never collected, never moved). Only a request that
// does not fit falls back to the Go heap (a block); the SDK guarantees that
// the collector is stopped whenever the host may call realloc (see stopGC
// in abi_wasip1.go), so that allocation cannot start a cycle, and pauses
// the WASI adapter's monotonic clock for the call, so the allocator's own
// clock reads do not leave the instance either.
//
// Everything the host wrote is copied into Go values when it is lifted,
// then the arena is reset: scratch is reused by every call of an attempt,
// and blocks become garbage.
type arena struct {
	scratch []byte
	base    uint32 // address of scratch[0]
	used    uint32 // scratch[:used] is handed out
	blocks  []block
	// addrOf gives a buffer's address in linear memory (on wasm, the real
	// address; in tests, a made-up one).
	addrOf func([]byte) uint32
}

// newArena makes an arena over scratch (which must stay allocated and in
// place for the arena's life).
func newArena(scratch []byte, addrOf func([]byte) uint32) arena {
	a := arena{scratch: scratch, addrOf: addrOf}
	if len(scratch) > 0 {
		a.base = addrOf(scratch)
	}
	return a
}

// bump returns the address of size bytes of scratch aligned to align
// (a power of two), or false when they do not fit. It never allocates.
func (a *arena) bump(size, align uint32) (uint32, bool) {
	start := (uint64(a.base) + uint64(a.used) + uint64(align) - 1) &^ (uint64(align) - 1)
	end := start + uint64(size)
	if end > uint64(a.base)+uint64(len(a.scratch)) {
		return 0, false
	}
	a.used = uint32(end - uint64(a.base))
	return uint32(start), true
}

// alloc returns the address of size zeroed bytes aligned to align, from
// the Go heap: for Go code (results lowered for the host), and for
// cabi_realloc requests too big for scratch.
func (a *arena) alloc(size, align uint32) uint32 {
	if align == 0 {
		align = 1
	}
	if size == 0 {
		// A valid, aligned, never-dereferenced address, as Rust's
		// allocator gives for empty allocations.
		return align
	}
	raw := make([]byte, size+align-1)
	base := a.addrOf(raw)
	off := (align - base%align) % align
	b := block{addr: base + off, buf: raw[off : off+size]}
	a.blocks = append(a.blocks, b)
	return b.addr
}

// scratchAlloc returns size zeroed bytes aligned to align, from scratch
// when they fit (an import's return area), else from the Go heap.
func (a *arena) scratchAlloc(size, align uint32) uint32 {
	if p, ok := a.bump(size, align); ok {
		clear(a.scratch[p-a.base : p-a.base+size])
		return p
	}
	return a.alloc(size, align)
}

// realloc implements cabi_realloc(old, oldSize, align, newSize): scratch
// when it fits (extending the last allocation in place when it can), else
// a Go heap block. The contents are not zeroed: the host writes them.
func (a *arena) realloc(old, oldSize, align, newSize uint32) uint32 {
	if align == 0 || align&(align-1) != 0 {
		align = 1
	}
	if newSize == 0 {
		return align
	}
	if old != 0 && oldSize != 0 && old%align == 0 && uint64(old)+uint64(oldSize) == uint64(a.base)+uint64(a.used) && old >= a.base {
		if uint64(old)+uint64(newSize) <= uint64(a.base)+uint64(len(a.scratch)) {
			a.used = old + newSize - a.base
			return old
		}
	}
	ptr, ok := a.bump(newSize, align)
	if !ok {
		ptr = a.alloc(newSize, align)
	}
	if old != 0 && oldSize != 0 {
		src, err := a.load(old, min(oldSize, newSize))
		if err == nil {
			dst, _ := a.load(ptr, newSize)
			copy(dst, src)
		}
	}
	return ptr
}

// load returns the n bytes at ptr, which must lie inside the handed-out
// part of scratch or inside one block.
func (a *arena) load(ptr, n uint32) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	if ptr >= a.base && uint64(ptr)+uint64(n) <= uint64(a.base)+uint64(a.used) {
		off := ptr - a.base
		return a.scratch[off : off+n], nil
	}
	for i := len(a.blocks) - 1; i >= 0; i-- {
		b := a.blocks[i]
		if ptr >= b.addr && uint64(ptr)+uint64(n) <= uint64(b.addr)+uint64(len(b.buf)) {
			off := ptr - b.addr
			return b.buf[off : off+n], nil
		}
	}
	return nil, fmt.Errorf("canonical ABI: the host pointed at %d bytes at %#x, outside the guest's allocations", n, ptr)
}

// storeString copies s into a new block and returns its (ptr, len).
func (a *arena) storeString(s string) (uint32, uint32) {
	if len(s) == 0 {
		return 1, 0
	}
	ptr := a.alloc(uint32(len(s)), 1)
	buf, _ := a.load(ptr, uint32(len(s)))
	copy(buf, s)
	return ptr, uint32(len(s))
}

// reset forgets everything handed out: the host is done with it, and what
// it wrote has been copied into Go values.
func (a *arena) reset() {
	a.used = 0
	clear(a.blocks)
	a.blocks = a.blocks[:0]
}

// reader decodes a canonical-ABI value from one block, remembering the
// first error.
type reader struct {
	a   *arena
	buf []byte
	err error
}

func (a *arena) reader(ptr, size uint32) *reader {
	buf, err := a.load(ptr, size)
	return &reader{a: a, buf: buf, err: err}
}

func (r *reader) u8(off uint32) uint8 {
	if r.err != nil {
		return 0
	}
	return r.buf[off]
}

func (r *reader) u32(off uint32) uint32 {
	if r.err != nil {
		return 0
	}
	return binary.LittleEndian.Uint32(r.buf[off:])
}

func (r *reader) u64(off uint32) uint64 {
	if r.err != nil {
		return 0
	}
	return binary.LittleEndian.Uint64(r.buf[off:])
}

// str lifts the string whose (ptr, len) is at off.
func (r *reader) str(off uint32) string {
	ptr, n := r.u32(off), r.u32(off+4)
	if r.err != nil || n == 0 {
		return ""
	}
	b, err := r.a.load(ptr, n)
	if err != nil {
		r.err = err
		return ""
	}
	return string(b)
}

// liftJob reads the job record at off.
func (r *reader) job(off uint32) *Job {
	j := &Job{
		id:              r.str(off + 0),
		name:            r.str(off + 8),
		queue:           r.str(off + 16),
		data:            r.str(off + 24),
		opts:            r.str(off + 32),
		attemptsMade:    r.u32(off + 40),
		attemptsStarted: r.u32(off + 44),
		timestamp:       r.u64(off + 48),
		progress:        r.str(off + 56),
	}
	switch r.u8(off + 64) {
	case 0:
	case 1:
		j.parent = &ParentRef{ID: r.str(off + 68), Queue: r.str(off + 76)}
	default:
		r.fail("option<parent-ref>", r.u8(off+64))
	}
	return j
}

func (r *reader) fail(what string, tag uint8) {
	if r.err == nil {
		r.err = fmt.Errorf("canonical ABI: invalid %s tag %d", what, tag)
	}
}

// liftJob decodes the `process` parameters (a job) at ptr.
func liftJob(a *arena, ptr uint32) (*Job, error) {
	r := a.reader(ptr, jobSize)
	j := r.job(0)
	return j, r.err
}

// backoffParams are the `backoff` export's parameters.
type backoffParams struct {
	strategy     string
	attemptsMade uint32
	reason       string
	job          *Job
}

// liftBackoffParams decodes the `backoff` parameters at ptr.
func liftBackoffParams(a *arena, ptr uint32) (backoffParams, error) {
	r := a.reader(ptr, backoffParamsSize)
	p := backoffParams{
		strategy:     r.str(0),
		attemptsMade: r.u32(8),
		reason:       r.str(12),
		job:          r.job(24),
	}
	return p, r.err
}

// failureKind is the `failure` variant's tag.
type failureKind uint8

const (
	failRetry         failureKind = 0
	failRetryAfter    failureKind = 1
	failUnrecoverable failureKind = 2
)

// processResult is `result<outcome, failure>` on the Go side.
type processResult struct {
	ok      bool
	moved   bool   // ok: outcome::moved
	json    string // ok: outcome::completed
	kind    failureKind
	reason  string
	delayMs uint64
}

// lowerProcessResult writes r into a new return area and returns its address.
func lowerProcessResult(a *arena, r processResult) uint32 {
	ret := a.alloc(processResultSize, 8)
	buf, _ := a.load(ret, processResultSize)
	le := binary.LittleEndian
	if r.ok {
		buf[0] = 0
		if r.moved {
			buf[8] = 1
		} else {
			buf[8] = 0
			p, n := a.storeString(r.json)
			le.PutUint32(buf[12:], p)
			le.PutUint32(buf[16:], n)
		}
		return ret
	}
	buf[0] = 1
	buf[8] = uint8(r.kind)
	p, n := a.storeString(r.reason)
	le.PutUint32(buf[16:], p)
	le.PutUint32(buf[20:], n)
	if r.kind == failRetryAfter {
		le.PutUint64(buf[24:], r.delayMs)
	}
	return ret
}

// lowerBackoff writes a backoff-decision into a new return area.
func lowerBackoff(a *arena, b Backoff) uint32 {
	ret := a.alloc(backoffResultSize, 8)
	buf, _ := a.load(ret, backoffResultSize)
	if b.giveUp {
		buf[0] = 1
	} else {
		buf[0] = 0
		binary.LittleEndian.PutUint64(buf[8:], b.delayMs)
	}
	return ret
}

// liftJobError decodes the job-error at off of an import's return area.
func (r *reader) jobError(off uint32) error {
	tag := r.u8(off)
	if r.err != nil {
		return nil
	}
	var kind HostErrorKind
	switch tag {
	case 0:
		// lock-lost has no payload: the bytes after the tag are whatever
		// the return area held before (scratch is reused), not a string.
		return &HostError{Kind: LockLost}
	case 1:
		kind = WrongState
	case 2:
		kind = Invalid
	case 3:
		kind = Unavailable
	default:
		r.fail("job-error", tag)
		return nil
	}
	msg := r.str(off + 4)
	if r.err != nil {
		return nil
	}
	return &HostError{Kind: kind, Message: msg}
}

// abiError turns a malformed answer from the host into a host error.
func abiError(err error) error {
	return &HostError{Kind: Unavailable, Message: err.Error()}
}

// liftUnitResult decodes result<_, job-error> at ret.
func liftUnitResult(a *arena, ret uint32) error {
	r := a.reader(ret, importResultSize)
	var err error
	switch tag := r.u8(0); tag {
	case 0:
	case 1:
		err = r.jobError(4)
	default:
		r.fail("result", tag)
	}
	if r.err != nil {
		return abiError(r.err)
	}
	return err
}

// liftStringResult decodes result<string, job-error> at ret.
func liftStringResult(a *arena, ret uint32) (string, error) {
	r := a.reader(ret, importResultSize)
	var s string
	var err error
	switch tag := r.u8(0); tag {
	case 0:
		s = r.str(4)
	case 1:
		err = r.jobError(4)
	default:
		r.fail("result", tag)
	}
	if r.err != nil {
		return "", abiError(r.err)
	}
	return s, err
}

// liftBoolResult decodes result<bool, job-error> at ret.
func liftBoolResult(a *arena, ret uint32) (bool, error) {
	r := a.reader(ret, importResultSize)
	var b bool
	var err error
	switch tag := r.u8(0); tag {
	case 0:
		switch v := r.u8(4); v {
		case 0, 1:
			b = v == 1
		default:
			r.fail("bool", v)
		}
	case 1:
		err = r.jobError(4)
	default:
		r.fail("result", tag)
	}
	if r.err != nil {
		return false, abiError(r.err)
	}
	return b, err
}

// rawChild is one (key, value JSON text) pair from children-values.
type rawChild struct{ key, value string }

// liftChildrenResult decodes result<list<tuple<string, string>>, job-error>.
func liftChildrenResult(a *arena, ret uint32) ([]rawChild, error) {
	r := a.reader(ret, importResultSize)
	var out []rawChild
	var err error
	switch tag := r.u8(0); tag {
	case 0:
		ptr, n := r.u32(4), r.u32(8)
		if r.err == nil && n > 0 {
			if uint64(n)*16 > 1<<32-1 {
				r.err = fmt.Errorf("canonical ABI: list of %d children is too long", n)
				break
			}
			items := a.reader(ptr, n*16)
			out = make([]rawChild, n)
			for i := uint32(0); i < n; i++ {
				out[i] = rawChild{key: items.str(i * 16), value: items.str(i*16 + 8)}
			}
			r.err = items.err
		}
	case 1:
		err = r.jobError(4)
	default:
		r.fail("result", tag)
	}
	if r.err != nil {
		return nil, abiError(r.err)
	}
	return out, err
}
