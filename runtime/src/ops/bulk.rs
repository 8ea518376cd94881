//! `bullpen add --file`: many jobs from an NDJSON file.
//!
//! Every line is parsed and checked before the first job is added, so a
//! typo on line 9,000 adds nothing rather than half a file. Jobs then go
//! in batches (BullMQ's add scripts, concurrently over one connection);
//! ids are printed on stdout in file order as each batch lands, so if Redis
//! goes away mid-way the ids printed so far are exactly the jobs added.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context};
use bullmq::{BulkJob, JobOptions};
use serde::Deserialize;

use crate::conn::RedisTarget;
use crate::json::JsonProblem;

/// Jobs per batch: large enough to keep the connection busy, small enough
/// that progress moves and a failure loses little.
const BATCH: usize = 500;

/// One line of the file: the same fields as BullMQ's `Queue.addBulk` entries.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    name: String,
    #[serde(default)]
    data: serde_json::Value,
    opts: Option<serde_json::Value>,
}

/// Parse the whole file into jobs, naming the first bad line.
pub(crate) fn parse_ndjson(reader: impl BufRead, default_opts: &JobOptions) -> anyhow::Result<Vec<BulkJob>> {
    let mut jobs = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("cannot read line {n}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = match serde_json::from_str(&line).map_err(JsonProblem::from) {
            Ok(parsed) => parsed,
            Err(JsonProblem::TooDeep) => anyhow::bail!("line {n} {}", JsonProblem::TooDeep),
            Err(JsonProblem::Invalid(e)) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "line {n} is not a job object {{\"name\", \"data\", \"opts\"}}: {}",
                    crate::sandbox::truncate_utf8(&line, 80)
                )))
            }
        };
        let opts = match parsed.opts {
            Some(o) => serde_json::from_value(o)
                .with_context(|| format!("line {n}: `opts` are not valid BullMQ job options"))?,
            None => default_opts.clone(),
        };
        jobs.push(BulkJob::with_options(parsed.name, parsed.data, opts));
    }
    Ok(jobs)
}

pub(crate) async fn add_file(
    redis: &RedisTarget,
    prefix: &str,
    queue_name: &str,
    file: &Path,
    default_opts: &JobOptions,
) -> anyhow::Result<()> {
    let jobs = if file == Path::new("-") {
        parse_ndjson(std::io::stdin().lock(), default_opts)?
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
        parse_ndjson(std::io::BufReader::new(f), default_opts)
            .with_context(|| format!("{}: nothing was added", file.display()))?
    };
    if jobs.is_empty() {
        bail!("{} has no jobs", file.display());
    }
    let total = jobs.len();
    let qopts =
        bullmq::QueueOptions { connection: redis.bullmq_options(), prefix: prefix.to_string(), ..Default::default() };
    let queue = bullmq::Queue::with_options(queue_name, qopts)
        .await
        .with_context(|| format!("cannot open queue `{queue_name}` on {redis}"))?;

    let progress = Progress::new(total as u64);
    let mut added = 0usize;
    let mut jobs = jobs.into_iter();
    let stdout = std::io::stdout();
    loop {
        let batch: Vec<BulkJob> = jobs.by_ref().take(BATCH).collect();
        if batch.is_empty() {
            break;
        }
        let n = batch.len();
        let done = queue.add_bulk(batch).await.with_context(|| {
            format!(
                "adding jobs {}..{} failed; the {added} jobs before them were added (their ids are printed)",
                added + 1,
                added + n
            )
        })?;
        let mut out = stdout.lock();
        for job in &done {
            writeln!(out, "{}", job.id())?;
        }
        out.flush()?;
        added += n;
        progress.set(added as u64);
    }
    progress.finish(queue_name);
    Ok(())
}

/// A bar on a terminal; otherwise a plain line every ~10% (logs stay readable).
enum Progress {
    Bar(indicatif::ProgressBar),
    Lines { total: u64, next: std::cell::Cell<u64> },
}

impl Progress {
    fn new(total: u64) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs  {per_sec}  eta {eta}")
                    .expect("valid template"),
            );
            Progress::Bar(bar)
        } else {
            Progress::Lines { total, next: std::cell::Cell::new(0) }
        }
    }

    fn set(&self, done: u64) {
        match self {
            Progress::Bar(b) => b.set_position(done),
            Progress::Lines { total, next } => {
                if done >= next.get() || done == *total {
                    eprintln!("added {done}/{total} jobs");
                    next.set(done + (*total / 10).max(1));
                }
            }
        }
    }

    fn finish(&self, queue: &str) {
        match self {
            Progress::Bar(b) => {
                b.finish_and_clear();
                eprintln!("added {} jobs to {queue}", b.length().unwrap_or_default());
            }
            Progress::Lines { total, .. } => eprintln!("added {total} jobs to {queue}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_bad_line() {
        let text = "{\"name\":\"a\",\"data\":{\"x\":1}}\n\n{\"name\":\"b\",\"data\":}\n";
        let err = parse_ndjson(text.as_bytes(), &JobOptions::default()).err().unwrap();
        assert!(format!("{err:#}").contains("line 3"), "{err:#}");
    }

    #[test]
    fn unknown_fields_and_bad_opts_are_refused() {
        let e = parse_ndjson("{\"name\":\"a\",\"dta\":1}".as_bytes(), &JobOptions::default()).err().unwrap();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
        let e = parse_ndjson("{\"name\":\"a\",\"opts\":{\"attempts\":\"x\"}}".as_bytes(), &JobOptions::default())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("opts"), "{e:#}");
    }

    #[test]
    fn blank_lines_are_skipped() {
        let jobs =
            parse_ndjson("\n{\"name\":\"a\"}\n  \n{\"name\":\"b\",\"data\":[1]}\n".as_bytes(), &JobOptions::default())
                .unwrap();
        assert_eq!(jobs.len(), 2);
    }
}
