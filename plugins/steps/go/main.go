// steps: the step-job pattern from BullMQ's "Process step jobs" guide, in
// Go; the same behaviour, byte for byte, as plugins/steps/rust.
//
// Initial → (update-data step=Second) → Second → move-to-delayed(now+200 ms)
// → Third → add two children to `data.childQueue` (default
// `<queue>-children`) → wait-for-children → Finish, which returns the
// children's return values. The step lives in the job data, so a retry, a
// delay or a wait resumes where the job left off.
//
// `data.failAt = "<Step>"` injects one retryable failure on entering that
// step (on the first attempt only), to show a retry resumes at that step.
//
// `data.rateLimitMs = N` makes the job, on entering Second, rate-limit its
// queue for N ms (back to wait); `data.moveToWait = true` moves it back to
// wait there. Each option is taken out of the data first, so it happens
// once and the job then carries on from Second.
//
// JSON is read and written with serdejson, so data and return values are
// the same text the Rust plugin (serde_json) writes.
package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"

	"bullpen.dev/guest"
	"bullpen.dev/guest/serdejson"
)

var steps = []string{"Initial", "Second", "Third", "Finish"}

// data is the job data: the step, two options, and whatever else the
// producer put there, kept as it is.
type data struct {
	step       string
	childQueue *string
	failAt     *string
	rest       map[string]any
}

func parseStep(v any) (string, error) {
	s, ok := v.(string)
	if ok {
		for _, st := range steps {
			if s == st {
				return s, nil
			}
		}
		return "", fmt.Errorf("unknown variant `%s`, expected one of `Initial`, `Second`, `Third`, `Finish`", s)
	}
	return "", fmt.Errorf("invalid type: %s, expected a step name", serdejson.Describe(v))
}

func parseData(text string) (*data, error) {
	v, err := serdejson.Parse(text)
	if err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("invalid type: %s, expected a map", serdejson.Describe(v))
	}
	d := &data{step: "Initial", rest: map[string]any{}}
	for k, v := range m {
		switch k {
		case "step":
			if d.step, err = parseStep(v); err != nil {
				return nil, err
			}
		case "childQueue":
			if v != nil {
				s, ok := v.(string)
				if !ok {
					return nil, fmt.Errorf("invalid type: %s, expected a string", serdejson.Describe(v))
				}
				d.childQueue = &s
			}
		case "failAt":
			if v != nil {
				s, err := parseStep(v)
				if err != nil {
					return nil, err
				}
				d.failAt = &s
			}
		default:
			d.rest[k] = v
		}
	}
	return d, nil
}

// json writes the data as the Rust plugin's struct does: step, childQueue
// and failAt (when set), then the other fields in key order.
func (d *data) json() string {
	obj := serdejson.Object{{Key: "step", Value: d.step}}
	if d.childQueue != nil {
		obj = append(obj, serdejson.Member{Key: "childQueue", Value: *d.childQueue})
	}
	if d.failAt != nil {
		obj = append(obj, serdejson.Member{Key: "failAt", Value: *d.failAt})
	}
	keys := make([]string, 0, len(d.rest))
	for k := range d.rest {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		obj = append(obj, serdejson.Member{Key: k, Value: d.rest[k]})
	}
	return mustMarshal(obj)
}

func mustMarshal(v any) string {
	s, err := serdejson.Marshal(v)
	if err != nil {
		panic(err) // only values this plugin built itself come here
	}
	return s
}

func nowMs() uint64 { return uint64(time.Now().UnixMilli()) }

func process(job *guest.Job) (guest.Outcome, error) {
	d, err := parseData(job.DataJSON())
	if err != nil {
		return guest.Outcome{}, guest.Unrecoverable("unexpected JSON shape: " + err.Error())
	}
	for {
		if d.failAt != nil && *d.failAt == d.step && job.AttemptsMade() == 0 {
			return guest.Outcome{}, guest.Retry("steps: injected failure at " + d.step)
		}
		if err := job.Log("steps: " + d.step); err != nil {
			return guest.Outcome{}, err
		}
		switch d.step {
		case "Initial":
			d.step = "Second"
			if err := job.UpdateData(json.RawMessage(d.json())); err != nil {
				return guest.Outcome{}, err
			}
		case "Second":
			if v, ok := d.rest["rateLimitMs"]; ok {
				delete(d.rest, "rateLimitMs")
				n, isNum := v.(json.Number)
				ms, err := strconv.ParseUint(string(n), 10, 64)
				if !isNum || err != nil {
					return guest.Outcome{}, guest.Unrecoverable("unexpected JSON shape: rateLimitMs is not a u64")
				}
				if err := job.UpdateData(json.RawMessage(d.json())); err != nil {
					return guest.Outcome{}, err
				}
				return job.RateLimit(ms)
			}
			if _, ok := d.rest["moveToWait"]; ok {
				delete(d.rest, "moveToWait")
				if err := job.UpdateData(json.RawMessage(d.json())); err != nil {
					return guest.Outcome{}, err
				}
				return job.MoveToWait()
			}
			d.step = "Third"
			if err := job.UpdateData(json.RawMessage(d.json())); err != nil {
				return guest.Outcome{}, err
			}
			return job.DelayUntil(nowMs() + 200)
		case "Third":
			queue := job.Queue() + "-children"
			if d.childQueue != nil {
				queue = *d.childQueue
			}
			for i := 1; i <= 2; i++ {
				// An id derived from the parent and the step: a retried
				// step finds its child instead of adding a second one.
				id := fmt.Sprintf("%s-child-%d", job.ID(), i)
				child := mustMarshal(map[string]any{"child": i, "parent": job.ID()})
				opts := mustMarshal(map[string]any{"jobId": id})
				if _, err := job.AddChild(queue, "child", json.RawMessage(child), json.RawMessage(opts)); err != nil {
					return guest.Outcome{}, err
				}
			}
			d.step = "Finish"
			if err := job.UpdateData(json.RawMessage(d.json())); err != nil {
				return guest.Outcome{}, err
			}
			if out, waiting, err := job.WaitForChildren(); err != nil || waiting {
				return out, err
			}
		case "Finish":
			kids, err := job.ChildrenValues()
			if err != nil {
				return guest.Outcome{}, err
			}
			children := map[string]any{}
			for _, c := range kids {
				v, err := serdejson.Parse(string(c.Value))
				if err != nil {
					return guest.Outcome{}, guest.Unrecoverable("unexpected JSON shape: " + err.Error())
				}
				children[c.Key] = v
			}
			out, err := serdejson.Marshal(map[string]any{"step": "Finish", "children": children})
			if err != nil {
				return guest.Outcome{}, guest.Unrecoverable("return value is not serialisable: " + err.Error())
			}
			return guest.CompleteJSON(out), nil
		}
	}
}

func init() { guest.ExportProcessor(process) }

func main() {}
