// `go test` on the build machine: the SDK's in-memory job context.
package main

import (
	"reflect"
	"testing"

	"bullpen.dev/guest/guesttest"
)

func TestReturnsItsDataAfterALogLineAndProgress100(t *testing.T) {
	j := guesttest.New(`{"to":"a@b.c","n":[1,2]}`)
	j.ID, j.Name = "7", "welcome"
	run := j.Run(process)
	if run.Outcome.Kind != guesttest.Completed || run.Outcome.Value != `{"to":"a@b.c","n":[1,2]}` {
		t.Fatalf("outcome %+v", run.Outcome)
	}
	want := []guesttest.Call{
		{Name: "log", Args: []any{"echo: job 7 (welcome)"}},
		{Name: "update-progress", Args: []any{float64(100)}},
	}
	if !reflect.DeepEqual(run.Calls, want) {
		t.Fatalf("calls %#v", run.Calls)
	}
}
