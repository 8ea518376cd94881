// hog: abuses the sandbox on purpose; `data.mode` picks the abuse. The Go
// twin of plugins/hog/rust: the same modes, return values and log lines,
// except where Go reaches the limit another way (noted below).
//
//   - `loop`: spins forever (stopped by the wall-clock limit)
//   - `memory`: grows memory without bound (stopped by the memory cap)
//   - `output`: writes ~8 MiB to stdout, then completes (the log keeps a bounded part)
//   - `recursion`: recurses without bound (a stack-overflow trap: each Go
//     call is also a wasm call, so the 1 MiB wasm stack runs out long before
//     Go's own goroutine-stack limit)
//   - `file` / `net` / `env`: tries to read a host file, open a socket, read the
//     environment; completes with what it got (errors, not access), as
//     `{"file": {"Err": "<Go's error>"}}` and `{"net": {"Err": ...}}` (Rust's
//     serde form of a Result; the error texts are Go's own)
//   - `biglog` / `bigprogress` / `bigdata`: a 100 KiB log line, a 100 KiB
//     progress value, 17 MiB of data; completes with the host's answers
//   - `bigreturn`: returns 17 MiB (over the host's return-value limit)
//   - `slow`: three steps of log line + progress (10, 20, 30), each followed
//     by 400 ms of waiting: sleeping (a WASI call) in steps 1 and 3, spinning
//     in wasm in step 2; shows pending writes reaching Redis mid-attempt
//   - `count`: prints and returns how many jobs this instance has processed
//     (always 1 with a fresh instance per attempt; counts up with
//     `--instance-reuse`)
//   - `entropy`: returns what a fresh instance must draw anew (issue 27: the
//     module is pre-initialised at build time): `crypto` (16 bytes of
//     crypto/rand, hex), `math` (math/rand/v2's next number, the runtime's
//     generator), `nowMs` (time.Now())
//   - anything else: completes with `{"ok": true}`
//
// Data without a string `mode` fails unrecoverably with serde's words
// ("unexpected JSON shape: missing field `mode`", without serde's line and column).
package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"bullpen.dev/guest"
	"bullpen.dev/guest/serdejson"
)

// sink keeps the compiler from dropping work whose result is unused (Rust's
// black_box).
var sink any

// processed counts the jobs this instance has processed: state that
// outlives a job only when the host reuses the instance.
var processed uint64

// parseMode reads the Rust plugin's `struct Data { mode: String }` as serde
// does: from an object (other keys ignored) or a one-element sequence.
func parseMode(text string) (string, error) {
	v, err := serdejson.Parse(text)
	if err != nil {
		return "", err
	}
	var m any
	switch v := v.(type) {
	case map[string]any:
		x, ok := v["mode"]
		if !ok {
			return "", fmt.Errorf("missing field `mode`")
		}
		m = x
	case []any:
		if len(v) != 1 {
			return "", fmt.Errorf("invalid length %d, expected struct Data with 1 element", len(v))
		}
		m = v[0]
	default:
		return "", fmt.Errorf("invalid type: %s, expected struct Data", serdejson.Describe(v))
	}
	s, ok := m.(string)
	if !ok {
		return "", fmt.Errorf("invalid type: %s, expected a string", serdejson.Describe(m))
	}
	return s, nil
}

//go:noinline
func recurse(n uint64, pad [16]uint64) uint64 {
	sink = pad[0]
	var next [16]uint64
	for i := range next {
		next[i] = n
	}
	return 1 + recurse(n+1, next)
}

// result is Rust's serde form of a Result<String, String>.
func result(ok string, err error) map[string]string {
	if err != nil {
		return map[string]string{"Err": err.Error()}
	}
	return map[string]string{"Ok": ok}
}

func process(job *guest.Job) (guest.Outcome, error) {
	processed++
	n := processed
	mode, err := parseMode(job.DataJSON())
	if err != nil {
		return guest.Outcome{}, guest.Unrecoverable("unexpected JSON shape: " + err.Error())
	}
	switch mode {
	case "loop":
		x := uint64(0)
		for {
			x++
			sink = x
		}
	case "memory":
		var hoard [][]byte
		for {
			b := make([]byte, 1<<20)
			for i := range b {
				b[i] = 1
			}
			hoard = append(hoard, b)
			sink = hoard
		}
	case "output":
		line := strings.Repeat("hog: flooding stdout ", 4)
		for i := 0; i < 100_000; i++ {
			fmt.Printf("%d %s\n", i, line)
		}
		return guest.Complete(map[string]any{"printed": 100_000})
	case "recursion":
		return guest.Complete(map[string]any{"depth": recurse(0, [16]uint64{})})
	case "file":
		b, err := os.ReadFile("/etc/passwd")
		return guest.Complete(map[string]any{"file": result(fmt.Sprint(len(b)), err)})
	case "net":
		c, err := net.Dial("tcp", "127.0.0.1:6379")
		if err == nil {
			c.Close()
		}
		return guest.Complete(map[string]any{"net": result("connected", err)})
	case "biglog", "bigprogress", "bigdata":
		var err error
		switch mode {
		case "biglog":
			err = job.Log(strings.Repeat("x", 100<<10))
		case "bigprogress":
			err = job.Progress(strings.Repeat("x", 100<<10))
		default:
			err = job.UpdateData(map[string]string{"blob": strings.Repeat("x", 17<<20)})
		}
		var refused any
		if err != nil {
			refused = err.Error()
		}
		return guest.Complete(map[string]any{"refused": refused})
	case "bigreturn":
		return guest.Complete(map[string]string{"blob": strings.Repeat("x", 17<<20)})
	case "slow":
		for step := 1; step <= 3; step++ {
			if err := job.Log(fmt.Sprintf("hog: step %d", step)); err != nil {
				return guest.Outcome{}, err
			}
			if err := job.Progress(step * 10); err != nil {
				return guest.Outcome{}, err
			}
			const wait = 400 * time.Millisecond
			if step == 2 {
				t := time.Now()
				for time.Since(t) < wait {
					sink = step
				}
			} else {
				time.Sleep(wait)
			}
		}
		return guest.Complete(map[string]any{"steps": 3})
	case "env":
		return guest.Complete(map[string]any{"env": len(os.Environ()), "args": len(os.Args)})
	case "count":
		fmt.Printf("hog: job %d of this instance\n", n)
		return guest.Complete(map[string]any{"processed": n})
	case "entropy":
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return guest.Outcome{}, err
		}
		return guest.Complete(map[string]any{
			"crypto": hex.EncodeToString(b),
			"math":   strconv.FormatUint(mrand.Uint64(), 10),
			"nowMs":  time.Now().UnixMilli(),
		})
	}
	return guest.Complete(map[string]any{"ok": true})
}

func init() { guest.ExportProcessor(process) }

func main() {}
