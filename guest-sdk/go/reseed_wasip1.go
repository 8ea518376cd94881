//go:build wasip1

package guest

import (
	"syscall"
	"unsafe"
)

// The Go runtime seeds its random generator (runtime.rand: math/rand,
// math/rand/v2, the seeds of maps made later, iteration order) once, when it
// starts. bullpen-componentize runs that start at build time and snapshots
// it (issue 27), so every instance would begin with the same generator
// state: the same math/rand numbers in every job. The first export call of
// each instance therefore replaces the state with bytes from the host's
// random_get. Without pre-initialisation this only costs that one call.
//
// No exported runtime function reseeds, and the state is not reachable by
// name: it is `m.chacha8`, an internal/chacha8rand.State
// {buf [32]uint64; seed [4]uint64; i, n, c uint32} inside the current m
// (getm). It is found by a value it just produced: runtime.rand returns
// buf[i-1] and advances i, so the word equal to that value, with i and n
// where they must be, is the state. Writing fresh buf and seed words is a
// valid state (both are uniformly random in a real one); i = 0 makes the
// next value buf[0], which checks the write.

//go:linkname runtimeGetm runtime.getm
func runtimeGetm() uintptr

//go:linkname runtimeRand runtime.rand
func runtimeRand() uint64

// reseeded is false in the snapshot and in a new instance; true once this
// instance's generator has fresh state.
var reseeded bool

const (
	chachaBufWords  = 32
	chachaSeedWords = 4
	chachaIOffset   = (chachaBufWords + chachaSeedWords) * 8
	// How far into the m struct to look (m is ~1.5 KiB in Go 1.24–1.26).
	mScanBytes = 8 << 10
)

// reseedRuntimeRand gives this instance's runtime generator fresh state;
// it traps (with a message) if the state cannot be found, rather than let
// every job draw the same numbers.
func reseedRuntimeRand() {
	if reseeded {
		return
	}
	var fresh [chachaBufWords + chachaSeedWords]uint64
	if err := syscall.RandomGet(unsafe.Slice((*byte)(unsafe.Pointer(&fresh[0])), len(fresh)*8)); err != nil {
		fatalReseed("random_get failed: " + err.Error())
	}
	base := findChacha8State()
	if base == 0 {
		fatalReseed("its state was not where Go 1.22–1.26 keep it")
	}
	copy(unsafe.Slice((*uint64)(unsafe.Pointer(base)), len(fresh)), fresh[:])
	*(*uint32)(unsafe.Pointer(base + chachaIOffset)) = 0
	if runtimeRand() != fresh[0] {
		fatalReseed("the new state did not take")
	}
	reseeded = true
}

// findChacha8State returns the address of the current m's chacha8 state, 0
// if not found.
func findChacha8State() uintptr {
	x := runtimeRand()
	m := runtimeGetm()
	for off := uintptr(0); off+8 <= mScanBytes; off += 8 {
		if *(*uint64)(unsafe.Pointer(m + off)) != x {
			continue
		}
		// x is buf[k]; then i == k+1 and n is 32 (or 28 before a reseed block).
		for k := uintptr(0); k < chachaBufWords && k*8 <= off; k++ {
			base := m + off - k*8
			i := *(*uint32)(unsafe.Pointer(base + chachaIOffset))
			n := *(*uint32)(unsafe.Pointer(base + chachaIOffset + 4))
			if uintptr(i) == k+1 && (n == chachaBufWords || n == chachaBufWords-4) {
				return base
			}
		}
	}
	return 0
}

func fatalReseed(why string) {
	writeStderr("bullpen guest SDK: cannot reseed the Go runtime's random generator in this instance (" + why +
		"); with a pre-initialised module every job would draw the same numbers. Rebuild it with " +
		"`bullpen-componentize --no-preinit`, and report the Go version.\n")
	trap()
}

func writeStderr(s string) {
	b := []byte(s)
	_, _ = syscall.Write(2, b)
}
