"""floor: completes every job with `null` and calls nothing (bench/guests/README.md)."""

from bullpen_guest import Job, Outcome, export_processor


def process(job: Job) -> Outcome:
    return Outcome.complete_json("null")


export_processor(process)
