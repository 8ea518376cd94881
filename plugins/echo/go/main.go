// echo: returns the job's data unchanged, after one log line and progress 100.
package main

import (
	"fmt"

	"bullpen.dev/guest"
)

func process(job *guest.Job) (guest.Outcome, error) {
	if err := job.Log(fmt.Sprintf("echo: job %s (%s)", job.ID(), job.Name())); err != nil {
		return guest.Outcome{}, err
	}
	if err := job.Progress(100); err != nil {
		return guest.Outcome{}, err
	}
	return guest.CompleteJSON(job.DataJSON()), nil
}

func init() { guest.ExportProcessor(process) }

func main() {}
