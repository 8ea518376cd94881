// flaky: misbehaves on purpose, to exercise retries, unrecoverable
// failures, traps, retry delays and lost locks; the same behaviour, byte
// for byte, as plugins/flaky/rust. Fields of `data`:
//
//   - `failTimes: n` — fail retryably while `attemptsMade < n`
//   - `retryAfterMs: ms` — those failures ask for their own delay (Celery's countdown)
//   - `fatal: true` — fail unrecoverably
//   - `panic: true` — panic (a trap)
//   - `plainError: true` — return a plain error (fmt.Errorf): a retryable
//     failure whose failedReason is its message and whose stacktrace names
//     this file
//   - `sleepMs: ms` — sleep first, then write `touchedOnAttempt` into the data
//     (a host call that fails with lock-lost if the lock was taken meanwhile)
//   - `returnChildren: true` — include the children's return values (flows)
//
// It also exports a custom backoff: job opts `backoff: {type: "linear"}`
// retry after 300 ms × attempts made; `{type: "never"}` gives up.
package main

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"bullpen.dev/guest"
	"bullpen.dev/guest/serdejson"
)

// data mirrors the Rust plugin's `#[serde(default)] struct Data`.
type data struct {
	failTimes      uint32
	retryAfterMs   *uint64
	fatal          bool
	panic          bool
	plainError     bool
	sleepMs        uint64
	returnChildren bool
}

var fields = []string{"failTimes", "retryAfterMs", "fatal", "panic", "plainError", "sleepMs", "returnChildren"}

// parseData reads the data as serde does for that struct: from an object
// (unknown keys ignored) or a sequence (fields in order), strictly typed.
func parseData(text string) (*data, error) {
	v, err := serdejson.Parse(text)
	if err != nil {
		return nil, err
	}
	d := &data{}
	set := func(name string, v any) error {
		var err error
		switch name {
		case "failTimes":
			var n uint64
			n, err = unsigned(v, math.MaxUint32, "u32")
			d.failTimes = uint32(n)
		case "retryAfterMs":
			if v != nil {
				var n uint64
				n, err = unsigned(v, math.MaxUint64, "u64")
				d.retryAfterMs = &n
			}
		case "fatal":
			d.fatal, err = boolean(v)
		case "panic":
			d.panic, err = boolean(v)
		case "plainError":
			d.plainError, err = boolean(v)
		case "sleepMs":
			d.sleepMs, err = unsigned(v, math.MaxUint64, "u64")
		case "returnChildren":
			d.returnChildren, err = boolean(v)
		}
		return err
	}
	switch v := v.(type) {
	case map[string]any:
		for _, f := range fields {
			if x, ok := v[f]; ok {
				if err := set(f, x); err != nil {
					return nil, err
				}
			}
		}
	case []any:
		if len(v) > len(fields) {
			return nil, fmt.Errorf("invalid length %d, expected fewer elements in array", len(v))
		}
		for i, x := range v {
			if err := set(fields[i], x); err != nil {
				return nil, err
			}
		}
	default:
		return nil, fmt.Errorf("invalid type: %s, expected struct Data", serdejson.Describe(v))
	}
	return d, nil
}

func unsigned(v any, max uint64, what string) (uint64, error) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, fmt.Errorf("invalid type: %s, expected %s", serdejson.Describe(v), what)
	}
	u, err := strconv.ParseUint(string(n), 10, 64)
	if err != nil || u > max {
		return 0, fmt.Errorf("invalid value: %s, expected %s", serdejson.Describe(v), what)
	}
	return u, nil
}

func boolean(v any) (bool, error) {
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("invalid type: %s, expected a boolean", serdejson.Describe(v))
	}
	return b, nil
}

func invalid(err error) error { return guest.Unrecoverable("unexpected JSON shape: " + err.Error()) }

func process(job *guest.Job) (guest.Outcome, error) {
	d, err := parseData(job.DataJSON())
	if err != nil {
		return guest.Outcome{}, invalid(err)
	}
	attempt := job.AttemptsMade() + 1
	if d.sleepMs > 0 {
		time.Sleep(time.Duration(d.sleepMs) * time.Millisecond)
		v, err := serdejson.Parse(job.DataJSON())
		if err != nil {
			return guest.Outcome{}, invalid(err)
		}
		raw, ok := v.(map[string]any)
		if !ok {
			return guest.Outcome{}, invalid(fmt.Errorf("invalid type: %s, expected a map", serdejson.Describe(v)))
		}
		raw["touchedOnAttempt"] = attempt
		text, err := serdejson.Marshal(raw)
		if err != nil {
			return guest.Outcome{}, invalid(err)
		}
		if err := job.UpdateData(json.RawMessage(text)); err != nil {
			return guest.Outcome{}, err
		}
	}
	if d.panic {
		panic(fmt.Sprintf("flaky: asked to panic on attempt %d", attempt))
	}
	if d.plainError {
		return guest.Outcome{}, fmt.Errorf("flaky: plain error on attempt %d", attempt)
	}
	if d.fatal {
		return guest.Outcome{}, guest.Unrecoverable(fmt.Sprintf("flaky: fatal error on attempt %d", attempt))
	}
	if job.AttemptsMade() < d.failTimes {
		reason := fmt.Sprintf("flaky: failing attempt %d of %d", attempt, d.failTimes)
		if d.retryAfterMs != nil {
			return guest.Outcome{}, guest.RetryAfter(reason, *d.retryAfterMs)
		}
		return guest.Outcome{}, guest.Retry(reason)
	}
	if err := job.Log(fmt.Sprintf("flaky: succeeded on attempt %d", attempt)); err != nil {
		return guest.Outcome{}, err
	}
	out := map[string]any{"succeededOnAttempt": attempt}
	if d.returnChildren {
		kids, err := job.ChildrenValues()
		if err != nil {
			return guest.Outcome{}, err
		}
		children := map[string]any{}
		for _, c := range kids {
			v, err := serdejson.Parse(string(c.Value))
			if err != nil {
				return guest.Outcome{}, invalid(err)
			}
			children[c.Key] = v
		}
		out["children"] = children
	}
	text, err := serdejson.Marshal(out)
	if err != nil {
		return guest.Outcome{}, guest.Unrecoverable("return value is not serialisable: " + err.Error())
	}
	return guest.CompleteJSON(text), nil
}

func backoff(strategy string, attemptsMade uint32, reason string, job *guest.Job) guest.Backoff {
	switch strategy {
	case "linear":
		return guest.DelayMs(300 * uint64(attemptsMade))
	case "never":
		return guest.GiveUp
	}
	return guest.DelayMs(0)
}

func init() { guest.ExportProcessor(process, guest.WithBackoff(backoff)) }

func main() {}
