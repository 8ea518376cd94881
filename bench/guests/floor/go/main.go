// floor: completes every job with `null` and calls nothing (bench/guests/README.md).
package main

import "bullpen.dev/guest"

func process(job *guest.Job) (guest.Outcome, error) {
	return guest.CompleteJSON("null"), nil
}

func init() { guest.ExportProcessor(process) }

func main() {}
