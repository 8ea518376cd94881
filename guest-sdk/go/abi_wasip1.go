//go:build wasip1

package guest

import (
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

//go:wasmimport bullpen:processor/job-context@0.1.0 add-child
func wasmAddChild(queue, name, data, opts string, ret uint32)

//go:wasmimport bullpen:processor/job-context@0.1.0 wait-for-children
func wasmWaitForChildren(ret uint32)

//go:wasmimport bullpen:processor/job-context@0.1.0 children-values
func wasmChildrenValues(ret uint32)

// trap executes `unreachable` (trap_wasm.s).
func trap()

func addrOf(b []byte) uint32 {
	return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

// mem holds what the host allocated in this instance through cabi_realloc
// and the return areas, until the host is done with them.
var mem = arena{addrOf: addrOf}

type wasmHost struct{}

func init() { host = wasmHost{} }

// retArea allocates an import's return area; the caller resets mem once
// it has lifted the result.
func retArea() uint32 { return mem.alloc(importResultSize, 4) }

func (wasmHost) updateData(data string) error {
	defer mem.reset()
	ret := retArea()
	wasmUpdateData(data, ret)
	return liftUnitResult(&mem, ret)
}

func (wasmHost) updateProgress(progress string) error {
	defer mem.reset()
	ret := retArea()
	wasmUpdateProgress(progress, ret)
	return liftUnitResult(&mem, ret)
}

func (wasmHost) log(line string) error {
	defer mem.reset()
	ret := retArea()
	wasmLog(line, ret)
	return liftUnitResult(&mem, ret)
}

func (wasmHost) moveToDelayed(timestampMs uint64) error {
	defer mem.reset()
	ret := retArea()
	wasmMoveToDelayed(timestampMs, ret)
	return liftUnitResult(&mem, ret)
}

func (wasmHost) addChild(queue, name, data, opts string) (string, error) {
	defer mem.reset()
	ret := retArea()
	wasmAddChild(queue, name, data, opts, ret)
	return liftStringResult(&mem, ret)
}

func (wasmHost) waitForChildren() (bool, error) {
	defer mem.reset()
	ret := retArea()
	wasmWaitForChildren(ret)
	return liftBoolResult(&mem, ret)
}

func (wasmHost) childrenValues() ([]rawChild, error) {
	defer mem.reset()
	ret := retArea()
	wasmChildrenValues(ret)
	return liftChildrenResult(&mem, ret)
}

// The component's exports.

//go:wasmexport cabi_realloc
func cabiRealloc(old, oldSize, align, newSize uint32) uint32 {
	return mem.realloc(old, oldSize, align, newSize)
}

//go:wasmexport process
func wasmProcess(params uint32) uint32 {
	job, err := liftJob(&mem, params)
	mem.reset()
	var r processResult
	if err != nil {
		r = processResult{kind: failRetry, reason: "bullpen guest SDK: " + err.Error()}
	} else {
		r = runProcess(job)
	}
	return lowerProcessResult(&mem, r)
}

//go:wasmexport cabi_post_process
func wasmPostProcess(uint32) { mem.reset() }

//go:wasmexport backoff
func wasmBackoff(params uint32) uint32 {
	p, err := liftBackoffParams(&mem, params)
	mem.reset()
	b := DelayMs(0)
	if err == nil {
		b = runBackoff(p)
	}
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
