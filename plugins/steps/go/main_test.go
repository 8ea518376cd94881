// `go test` on the build machine: each attempt of the step pattern run
// against the SDK's in-memory job context, the next one on the data the
// previous one left.
package main

import (
	"reflect"
	"strings"
	"testing"

	"bullpen.dev/guest/guesttest"
)

func TestWalksTheStepsAcrossAttempts(t *testing.T) {
	j := guesttest.New(`{"keep":1}`)
	j.ID = "9"
	first := j.Run(process)
	if first.Outcome.Kind != guesttest.Moved || first.Outcome.To != "delayed" {
		t.Fatalf("first: %+v", first.Outcome)
	}
	if got := first.Logs(); !reflect.DeepEqual(got, []string{"steps: Initial", "steps: Second"}) {
		t.Fatalf("logs %q", got)
	}
	var names []string
	for _, c := range first.Calls {
		names = append(names, c.Name)
	}
	if want := []string{"log", "update-data", "log", "update-data", "move-to-delayed"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("calls %q", names)
	}
	if first.Data != `{"step":"Third","keep":1}` {
		t.Fatalf("data %s", first.Data)
	}

	j = guesttest.New(first.Data)
	j.ID = "9"
	third := j.Run(process)
	if third.Outcome.Kind != guesttest.Moved || third.Outcome.To != "waiting-children" {
		t.Fatalf("third: %+v", third.Outcome)
	}
	children := third.Named("add-child")
	want := []any{"test-children", "child", map[string]any{"child": float64(1), "parent": "9"}, map[string]any{"jobId": "9-child-1"}}
	if len(children) != 2 || !reflect.DeepEqual(children[0].Args, want) {
		t.Fatalf("children %#v", children)
	}

	j = guesttest.New(third.Data)
	j.ID = "9"
	j.ChildrenValues = map[string]string{"bull:test-children:9-child-2": "2", "bull:test-children:9-child-1": "1"}
	last := j.Run(process)
	if last.Outcome.Kind != guesttest.Completed ||
		last.Outcome.Value != `{"children":{"bull:test-children:9-child-1":1,"bull:test-children:9-child-2":2},"step":"Finish"}` {
		t.Fatalf("last: %+v", last.Outcome)
	}
}

func TestAnInjectedFailureRetriesOnTheFirstAttemptOnly(t *testing.T) {
	run := guesttest.New(`{"failAt":"Second","step":"Second"}`).Run(process)
	o := run.Outcome
	if o.Kind != guesttest.Failed || o.Failure != "retry" || o.Reason != "steps: injected failure at Second" {
		t.Fatalf("%+v", o)
	}
	if !strings.Contains(o.Stack, "main.go:") {
		t.Fatalf("stack %q", o.Stack)
	}
	j := guesttest.New(`{"failAt":"Second","step":"Second"}`)
	j.AttemptsMade = 1
	if again := j.Run(process); again.Outcome.Kind != guesttest.Moved || again.Outcome.To != "delayed" {
		t.Fatalf("again: %+v", again.Outcome)
	}
}
