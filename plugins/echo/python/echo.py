"""echo: returns the job's data unchanged, after one log line and progress 100.
The Python twin of plugins/echo/rust."""

from bullpen_guest import Job, Outcome, export_processor


def process(job: Job) -> Outcome:
    job.log(f"echo: job {job.id} ({job.name})")
    job.progress(100)
    return Outcome.complete_json(job.data_json)


export_processor(process)
