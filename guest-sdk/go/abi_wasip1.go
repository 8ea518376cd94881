//go:build wasip1

package guest

import (
	"encoding/json"
	"fmt"
	"math"
	"runtime/debug"
	"sync"
	"unsafe"
)

// The component's imports: bullpen:processor/job-context@0.1.0, lowered.
// Strings go as (ptr, len); a result<..., job-error> comes back through a
// return area whose address is the last parameter.

//go:wasmimport bullpen:processor/job-context@0.1.0 update-data
func wasmUpdateData(data string, ret uint32)

//go:wasmimport bullpen:processor/job-context@0.1.0 update-progress
func wasmUpdateProgress(progress string, ret uint32)

//go:wasmimport bullpen:processor/job-context@0.1.0 log
func wasmLog(line string, ret uint32)

//go:wasmimport bullpen:processor/job-context@0.1.0 move-to-delayed
func wasmMoveToDelayed(timestampMs uint64, ret uint32)

//go:wasmimport bullpen:processor/job-context@0.1.0 rate-limit
func wasmRateLimit(delayMs uint64, ret uint32)

//go:wasmimport bullpen:processor/job-context@0.1.0 move-to-wait
func wasmMoveToWait(ret uint32)

//go:wasmimport bullpen:processor/job-context@0.1.0 add-child
func wasmAddChild(queue, name, data, opts string, ret uint32)

//go:wasmimport bullpen:processor/job-context@0.1.0 wait-for-children
func wasmWaitForChildren(ret uint32)

//go:wasmimport bullpen:processor/job-context@0.1.0 children-values
func wasmChildrenValues(ret uint32)

//go:wasmimport bullpen:processor/job-context@0.1.0 set-stacktrace
func wasmSetStacktrace(stack string)

// trap executes `unreachable` (trap_wasm.s).
func trap()

// adapterMonotonicClockSetPaused is the WASI preview1 adapter's own export
// (wasmtime's adapter, 48+): while paused, clock_time_get(MONOTONIC)
// answers the last value it read instead of calling the host. The Go
// allocator reads that clock (heap growth that scavenges), and no import
// may be called inside cabi_realloc.
//
//go:wasmimport wasi_snapshot_preview1 adapter_monotonic_clock_set_paused
func adapterMonotonicClockSetPaused(paused bool)

func addrOf(b []byte) uint32 {
	return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

// reallocScratch is where cabi_realloc hands out memory first: a static
// array, so handing it out never involves the Go allocator or collector.
// 64 KiB holds the host's error texts, child ids and ordinary jobs; what
// does not fit (large job data, children's values) goes to the Go heap,
// with the collector stopped (stopGC) and the monotonic clock paused.
var reallocScratch [64 << 10]byte

// mem holds what the host allocated in this instance through cabi_realloc,
// the import return areas and the export results, until the host is done
// with them.
var mem = newArena(reallocScratch[:], addrOf)

// The collector must not run while the host may call cabi_realloc: a
// cycle's WASI calls (clocks, the timer poll when it restarts the world,
// goroutine switches) would trap there. The host calls it while lowering
// an export's parameters (between exports) and an import's results
// (during an import call), so the collector is stopped from init until
// `process` (or `backoff`) has lifted its parameters, is restarted for the
// guest's own code, and is stopped again around every import call and from
// the moment an export has finished the guest's code. Stopped means
// SetGCPercent(-1), which also waits for a cycle already marking to
// finish, with no memory limit (which would start cycles even then);
// restarting puts back the guest's own settings (GOGC defaults: 100, no
// limit).
type gcSettings struct {
	percent int
	limit   int64
}

func stopGC() gcSettings {
	limit := debug.SetMemoryLimit(math.MaxInt64)
	return gcSettings{percent: debug.SetGCPercent(-1), limit: limit}
}

func (s gcSettings) restart() {
	debug.SetGCPercent(s.percent)
	debug.SetMemoryLimit(s.limit)
}

// guestGC is the guest's collector settings while the collector is stopped
// between exports.
var guestGC gcSettings

type wasmHost struct{}

func init() {
	host = wasmHost{}
	warmUp()
	guestGC = stopGC()
}

// warmUp runs at build time: bullpen-componentize pre-initialises the
// module after every init and snapshots it, so what this fills is in every
// fresh instance instead of being made by its first call — fmt's printer
// pool (sync.Pool's per-P arrays) and encoding/json's encoder state and
// type caches for JSON's own types, which most processors use.
func warmUp() {
	_ = fmt.Sprintf("%s %d %v %q", "warm", 1, 2.5, "x")
	b, _ := json.Marshal(map[string]any{"a": []any{1, "b", nil, true, 2.5}})
	var v any
	_ = json.Unmarshal(b, &v)
}

// callMu makes import calls from several goroutines take turns: stopGC
// may park the caller until a cycle's marking ends, and another goroutine
// must not then restart the collector under it, or share the arena.
var callMu sync.Mutex

// call makes one import call: with the collector stopped, a zeroed return
// area from scratch, the call, lifting (copying) its result, then the
// arena reset for the next call.
func call[T any](imp func(ret uint32), lift func(a *arena, ret uint32) (T, error)) (T, error) {
	return callArea(importResultSize, 4, imp, lift)
}

// callArea is call with a return area of size bytes aligned to align.
func callArea[T any](size, align uint32, imp func(ret uint32), lift func(a *arena, ret uint32) (T, error)) (T, error) {
	callMu.Lock()
	defer callMu.Unlock()
	gc := stopGC()
	ret := mem.scratchAlloc(size, align)
	imp(ret)
	v, err := lift(&mem, ret)
	mem.reset()
	gc.restart()
	return v, err
}

func unit(a *arena, ret uint32) (struct{}, error) { return struct{}{}, liftUnitResult(a, ret) }

func (wasmHost) updateData(data string) error {
	_, err := call(func(ret uint32) { wasmUpdateData(data, ret) }, unit)
	return err
}

func (wasmHost) updateProgress(progress string) error {
	_, err := call(func(ret uint32) { wasmUpdateProgress(progress, ret) }, unit)
	return err
}

func (wasmHost) log(line string) error {
	_, err := call(func(ret uint32) { wasmLog(line, ret) }, unit)
	return err
}

func (wasmHost) moveToDelayed(timestampMs uint64) error {
	_, err := call(func(ret uint32) { wasmMoveToDelayed(timestampMs, ret) }, unit)
	return err
}

func (wasmHost) rateLimit(delayMs uint64) error {
	_, err := call(func(ret uint32) { wasmRateLimit(delayMs, ret) }, unit)
	return err
}

func (wasmHost) moveToWait() error {
	_, err := call(wasmMoveToWait, unit)
	return err
}

func (wasmHost) addChild(queue, name, data, opts string) (string, error) {
	return call(func(ret uint32) { wasmAddChild(queue, name, data, opts, ret) }, liftStringResult)
}

func (wasmHost) waitForChildren() (bool, error) {
	return call(wasmWaitForChildren, liftBoolResult)
}

func (wasmHost) childrenValues() ([]rawChild, error) {
	return call(wasmChildrenValues, liftChildrenResult)
}

// set-stacktrace has no result: nothing for the host to allocate, so
// only the collector is stopped, as around every import call.
func (wasmHost) setStacktrace(stack string) {
	callMu.Lock()
	defer callMu.Unlock()
	gc := stopGC()
	wasmSetStacktrace(stack)
	gc.restart()
}

// The component's exports.

// cabi_realloc never calls the Go allocator for what fits in scratch. What
// does not fit comes from the Go heap, which is safe here only because the
// collector is stopped whenever the host may call this (stopGC: no cycle
// can start, so none of its clock reads, timer polls or goroutine switches)
// and the monotonic clock is paused for the call (the allocator's own clock
// reads get a cached value). nosplit: the clock is paused before anything
// here can grow the stack (stack growth may allocate).
//
//go:wasmexport cabi_realloc
//go:nosplit
func cabiRealloc(old, oldSize, align, newSize uint32) uint32 {
	adapterMonotonicClockSetPaused(true)
	p := mem.realloc(old, oldSize, align, newSize)
	adapterMonotonicClockSetPaused(false)
	return p
}

//go:wasmexport process
func wasmProcess(params uint32) uint32 {
	reseedRuntimeRand()
	// The host has lowered the parameters and calls no realloc until this
	// export returns, so the collector may run from here, lifting included:
	// the lifted job is most of a call's garbage, and a processor that
	// allocates nothing itself would otherwise never let a cycle start (an
	// instance kept by --instance-reuse then grew until the memory cap).
	guestGC.restart()
	job, err := liftJob(&mem, params)
	mem.reset()
	var r processResult
	if err != nil {
		r = processResult{kind: failRetry, reason: "bullpen guest SDK: " + err.Error()}
	} else {
		r = runProcess(job)
	}
	guestGC = stopGC()
	return lowerProcessResult(&mem, r)
}

//go:wasmexport cabi_post_process
func wasmPostProcess(uint32) { mem.reset() }

//go:wasmexport backoff
func wasmBackoff(params uint32) uint32 {
	reseedRuntimeRand()
	guestGC.restart() // as in wasmProcess
	p, err := liftBackoffParams(&mem, params)
	mem.reset()
	b := DelayMs(0)
	if err == nil {
		b = runBackoff(p)
	}
	guestGC = stopGC()
	return lowerBackoff(&mem, b)
}

//go:wasmexport cabi_post_backoff
func wasmPostBackoff(uint32) { mem.reset() }

// The WASI adapter's own memory (its stack and state, about 70 KiB),
// allocated while the Go runtime may still be starting (its first WASI
// call comes from the runtime's initialisation), so without the Go heap:
// a bump allocator over a static array that the Go runtime never reuses.
// memory.grow is no option: Go assumes it owns all growth of memory.
var adapterHeap [256 << 10]byte
var adapterUsed uintptr

//go:wasmexport cabi_realloc_adapter
//go:nosplit
func cabiReallocAdapter(old, oldSize, align, newSize uint32) uint32 {
	if old != 0 || align == 0 {
		trap()
	}
	base := uintptr(unsafe.Pointer(&adapterHeap[0]))
	start := (base + adapterUsed + uintptr(align) - 1) &^ (uintptr(align) - 1)
	end := start + uintptr(newSize)
	if end > base+uintptr(len(adapterHeap)) {
		trap()
	}
	adapterUsed = end - base
	return uint32(start)
}
