//! `bullpen run`: a processor on one job held in memory, no Redis. The
//! attempt is a worker's (same store, limits, WASI context, argument checks,
//! trap reasons); only the job lives in memory, and every host call is
//! printed as it happens, then the outcome.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::bindings::types::{self as wit, Failure, Outcome};
use crate::cli::{child_queues, ExitStatus, LimitArgs};
use crate::engine::{new_engine_with, EngineOptions};
use crate::error::AttemptError;
use crate::host::local::{now_ms, Report};
use crate::host::{Backend, LocalJob, Moved};
use crate::plugin::{new_linker, Plugin};
use crate::sandbox::{CapturedOutput, HostState, Limits};
use crate::worker::{call_process, trap_reason};

/// More attempts than any real job needs; stops `--until-done` on a guest
/// that delays itself forever.
const MAX_RUNS: u32 = 100;

const RUN_HELP: &str = "\
Output: one line per event on stdout, in order:
  output \"...\"                      a line the guest wrote to stdout/stderr
  update-data {...}                 update-progress 50          log \"...\"
  move-to-delayed <ts> (in <n> ms)  wait-for-children -> true   children-values -> {...}
  add-child queue=<q> name=<n> data={...} opts={...} -> <child id>
  <call> ... -> refused (<job-error>): <why>     (the guest got that error)
then the outcome:
  completed <return value>
  moved (delayed) | moved (waiting-children)
  failed (retry|retry-after <n> ms|unrecoverable|trap|timeout|error): <reason>
With --until-done, `next attempt ...` lines separate the attempts.
--json prints each event as one JSON object with an \"event\" field instead.

In memory: update-data changes the data later attempts see (--until-done);
children are never run: wait-for-children returns true while children added
in this run are pending (with --until-done they count as finished after the
wait); children-values returns --children-values. Delays and backoff are not
waited for.

Exit status: 0 completed or moved, 1 failed, 2 could not run (bad arguments,
a file that is not a valid processor component).";

#[derive(Args, Debug)]
#[command(after_help = "The output format and exit status: bullpen run --help", after_long_help = RUN_HELP)]
pub struct RunArgs {
    /// The processor: a WebAssembly component of the bullpen:processor world.
    pub file: PathBuf,
    /// The job's data, as JSON.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// Job name.
    #[arg(long, default_value = "job")]
    pub name: String,
    /// Job id ("1": a queue's first job id in BullMQ).
    #[arg(long, default_value = "1")]
    pub id: String,
    /// The job's queue name (children may go to it and to
    /// '<queue>-children' unless --child-queue says otherwise).
    #[arg(long, default_value = "local")]
    pub queue: String,
    /// BullMQ job options, as JSON (e.g. '{"attempts":3}').
    #[arg(long, default_value = "{}")]
    pub opts: String,
    /// BullMQ `attemptsMade`: attempts before this one.
    #[arg(long, default_value_t = 0)]
    pub attempts_made: u32,
    /// What children-values returns: a JSON object of child key
    /// ('bull:<queue>:<id>') to return value. Default: none.
    #[arg(long)]
    pub children_values: Option<String>,
    /// A queue the guest may add children to (repeatable; '*' for any).
    /// Default: --queue and '<queue>-children', as for `worker`.
    #[arg(long = "child-queue")]
    pub child_queues: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Run attempts as a worker would until the job completes or fails for
    /// good: again after a move, or after a failure while --opts `attempts`
    /// allow one more (without waiting for delays).
    #[arg(long)]
    pub until_done: bool,
    /// One JSON object per event instead of text.
    #[arg(long)]
    pub json: bool,
}

/// How one attempt ended.
enum Ending {
    Completed(String),
    Moved(Moved),
    Failed { kind: &'static str, reason: String, delay_ms: Option<u64> },
}

impl Ending {
    fn failed(kind: &'static str, reason: impl Into<String>) -> Ending {
        Ending::Failed { kind, reason: reason.into(), delay_ms: None }
    }

    fn print(&self, report: Report) {
        match self {
            Ending::Completed(json) => {
                let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
                report.event(&format!("completed {json}"), json!({ "event": "completed", "returnvalue": v }));
            }
            Ending::Moved(m) => {
                let to = match m {
                    Moved::Delayed => "delayed",
                    Moved::WaitingChildren => "waiting-children",
                };
                report.event(&format!("moved ({to})"), json!({ "event": "moved", "to": to }));
            }
            Ending::Failed { kind, reason, delay_ms } => {
                let label = match delay_ms {
                    Some(ms) => format!("{kind} {ms} ms"),
                    None => kind.to_string(),
                };
                let mut v = json!({ "event": "failed", "kind": kind, "reason": reason });
                if let Some(ms) = delay_ms {
                    v["delayMs"] = (*ms).into();
                }
                report.event(&format!("failed ({label}): {reason}"), v);
            }
        }
    }
}

/// Everything about the job that does not change between attempts.
struct Setup {
    plugin: std::sync::Arc<Plugin>,
    engine: wasmtime::Engine,
    limits: Limits,
    job: wit::Job,
    /// `opts.attempts` (0 = one attempt, as in BullMQ).
    attempts: u32,
}

pub async fn run(a: RunArgs) -> anyhow::Result<()> {
    let report = Report { json: a.json, quiet: false };
    let (mut s, mut local) = match setup(&a, report) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Err(ExitStatus(2).into());
        }
    };
    for run in 1..=MAX_RUNS {
        let ending;
        (ending, local) = attempt(&s, local).await;
        ending.print(report);
        let again = match &ending {
            Ending::Completed(_) => return Ok(()),
            Ending::Moved(_) if !a.until_done => return Ok(()),
            Ending::Moved(m) => {
                s.job.attempts_started += 1;
                format!("after {}", if *m == Moved::Delayed { "move-to-delayed, not waiting" } else { "the children finished" })
            }
            Ending::Failed { kind, .. } => {
                // BullMQ's rule: retry while attemptsMade + 1 < attempts.
                let retries = *kind != "unrecoverable" && s.job.attempts_made + 1 < s.attempts;
                if !a.until_done || !retries {
                    return Err(ExitStatus(1).into());
                }
                s.job.attempts_made += 1;
                s.job.attempts_started += 1;
                format!("retry {} of {}, not waiting for backoff", s.job.attempts_made + 1, s.attempts)
            }
        };
        if run == MAX_RUNS {
            break;
        }
        s.job.data = local.data.clone();
        report.event(
            &format!("next attempt: attemptsMade={} attemptsStarted={} ({again})", s.job.attempts_made, s.job.attempts_started),
            json!({ "event": "next-attempt", "attemptsMade": s.job.attempts_made, "attemptsStarted": s.job.attempts_started }),
        );
    }
    eprintln!("error: --until-done stopped after {MAX_RUNS} attempts: the job never completed or failed for good");
    Err(ExitStatus(1).into())
}

/// Check the arguments and load the plugin, as a worker would.
fn setup(a: &RunArgs, report: Report) -> anyhow::Result<(Setup, LocalJob)> {
    let data: Value = serde_json::from_str(&a.data).with_context(|| format!("--data is not valid JSON: {:?}", a.data))?;
    let opts: bullmq::JobOptions =
        serde_json::from_str(&a.opts).with_context(|| format!("--opts is not valid BullMQ job options: {:?}", a.opts))?;
    let children_values: Vec<(String, String)> = match &a.children_values {
        None => Vec::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
            Ok(_) => anyhow::bail!("--children-values must be a JSON object of child key to return value, got {text:?}"),
            Err(e) => anyhow::bail!("--children-values is not valid JSON: {e}: {text:?}"),
        },
    };
    let limits = a.limits.limits();
    // The guest sees data and opts as a worker passes them: compact JSON.
    let data = data.to_string();
    if data.len() > limits.max_payload_bytes {
        return Err(AttemptError::DataTooLarge { bytes: data.len(), limit: limits.max_payload_bytes }.into());
    }
    let engine = new_engine_with(EngineOptions { fuel: limits.fuel.is_some() })?;
    let linker = new_linker(&engine)?;
    let plugin = Plugin::from_file(&engine, &linker, &a.file)?;
    let job = wit::Job {
        id: a.id.clone(),
        name: a.name.clone(),
        queue: a.queue.clone(),
        data: data.clone(),
        opts: serde_json::to_string(&opts)?,
        attempts_made: a.attempts_made,
        attempts_started: a.attempts_made + 1,
        timestamp: now_ms(),
        progress: "0".into(),
        parent: None,
    };
    let local = LocalJob::new(data, children_values, limits.clone(), child_queues(&a.queue, &a.child_queues), report);
    Ok((Setup { plugin, engine, attempts: opts.attempts.unwrap_or(0), limits, job }, local))
}

/// One attempt, classified as a worker classifies it; returns the job for the next.
async fn attempt(s: &Setup, mut local: LocalJob) -> (Ending, LocalJob) {
    let limits = &s.limits;
    let out = CapturedOutput::new(limits.max_output_bytes);
    local.next_attempt(out.clone());
    let (store, called, _) = call_process(&s.engine, &s.plugin, HostState::new(local, limits, &out), limits, &s.job).await;
    let memory_hit = store.data().memory.hit;
    let Backend::Local(local) = store.into_data().job else { unreachable!("`bullpen run` attempts run in memory") };
    let lines = local.flush_output();
    let ending = match called {
        Err(AttemptError::Trap(t)) => Ending::failed("trap", trap_reason(t, memory_hit, limits, &lines)),
        Err(e @ AttemptError::Timeout { .. }) => Ending::failed("timeout", e.to_string()),
        Err(e) => Ending::failed("error", e.to_string()),
        // The return value is checked as a worker checks it.
        Ok(Ok(Outcome::Completed(json))) if json.len() > limits.max_payload_bytes => {
            Ending::failed("retry", format!("return value is {} bytes; the limit is {}", json.len(), limits.max_payload_bytes))
        }
        Ok(Ok(Outcome::Completed(json))) => match serde_json::from_str::<serde::de::IgnoredAny>(&json) {
            Ok(_) => Ending::Completed(json),
            Err(e) => Ending::failed("unrecoverable", AttemptError::BadOutput(format!("return value is not valid JSON: {e}")).to_string()),
        },
        Ok(Ok(Outcome::Moved)) => match local.moved {
            Some(m) => Ending::Moved(m),
            None => Ending::failed(
                "retry",
                "processor returned `moved` but no host call moved the job (call move-to-delayed or wait-for-children first)",
            ),
        },
        Ok(Err(Failure::Retry(reason))) => Ending::failed("retry", reason),
        Ok(Err(Failure::Unrecoverable(reason))) => Ending::failed("unrecoverable", reason),
        Ok(Err(Failure::RetryAfter(r))) => Ending::Failed { kind: "retry-after", reason: r.reason, delay_ms: Some(r.delay_ms) },
    };
    (ending, local)
}

/// One attempt of a plugin on an in-memory job, printing nothing: what the
/// `attempt-overhead` benchmark measures (new Store + WASI context +
/// instantiate + `process` + drop), without Redis.
#[doc(hidden)]
pub struct BenchAttempt {
    setup: Setup,
}

impl BenchAttempt {
    /// Load `file` (echo-like: the job data is `{"bench":true}`).
    pub fn new(file: &std::path::Path) -> anyhow::Result<BenchAttempt> {
        let limits = crate::Limits::default();
        let engine = new_engine_with(EngineOptions { fuel: false })?;
        let linker = new_linker(&engine)?;
        let plugin = Plugin::from_file(&engine, &linker, file)?;
        let job = wit::Job {
            id: "1".into(),
            name: "bench".into(),
            queue: "bench".into(),
            data: r#"{"bench":true}"#.into(),
            opts: "{}".into(),
            attempts_made: 0,
            attempts_started: 1,
            timestamp: now_ms(),
            progress: "0".into(),
            parent: None,
        };
        Ok(BenchAttempt { setup: Setup { plugin, engine, attempts: 0, limits, job } })
    }

    /// Run one attempt in the instance `warm` holds, or a fresh one (kept
    /// for the next call if `warm` reuses, as `--instance-reuse` does);
    /// true when it completed.
    pub async fn once(&self, warm: &mut BenchWarm) -> bool {
        let s = &self.setup;
        let job = |out: &CapturedOutput| {
            let mut local = LocalJob::new(s.job.data.clone(), Vec::new(), s.limits.clone(), crate::host::ChildQueues::Any, Report { json: false, quiet: true });
            local.next_attempt(out.clone());
            Backend::Local(local)
        };
        let (mut store, instance, out) = crate::worker::prepare(&s.engine, &s.limits, warm.kept.take(), job);
        let (called, instance, _) = crate::worker::call_in(&mut store, instance, &s.plugin, &s.limits, &s.job).await;
        if let (true, Some(instance)) = (warm.reuse, instance) {
            warm.kept = Some(crate::worker::Kept { store, instance, out });
        }
        matches!(called, Ok(Ok(Outcome::Completed(_))))
    }
}

/// Whether [`BenchAttempt::once`] runs in a fresh instance each time, or
/// keeps its instance for the next call.
pub struct BenchWarm {
    reuse: bool,
    kept: Option<crate::worker::Kept>,
}

impl BenchWarm {
    /// A fresh instance per attempt (the default worker).
    pub fn fresh() -> Self {
        BenchWarm { reuse: false, kept: None }
    }
    /// One instance for every attempt (`--instance-reuse`).
    pub fn reuse() -> Self {
        BenchWarm { reuse: true, kept: None }
    }
}
