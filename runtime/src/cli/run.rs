//! `bullpen run`: a processor on one job held in memory, no Redis. The
//! attempt is a worker's (same store, limits, WASI context, argument checks,
//! trap reasons); only the job lives in memory, and every host call is
//! printed as it happens, then the outcome.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use super::config::Settings;
use super::{ExitStatus, LimitArgs};
use crate::attempt::exec::{self, Kept};
use crate::attempt::verdict::{verdict, Ended};
use crate::attempt::{LimitKind, Verdict};
use crate::bindings::types as wit;
use crate::error::{InputError, PluginError};
use crate::host::config::{parse_var, parse_var_env, VarSource};
use crate::host::{Backend, ChildQueues, Grants, LocalJob, Moved, Report};
use crate::now_ms;
use crate::plugins::plugin::will_compile;
use crate::plugins::{new_linker, Plugin};
use crate::sandbox::engine::{new_engine_with, EngineOptions};
use crate::sandbox::{CapturedOutput, Limits};

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
  http POST https://host/path -> 200 (342 B, 12 ms)      (when the body is read or dropped)
  http GET https://host/path -> denied (not in --allow-outbound)
  http GET https://host/path -> error (<why>)    (no response: DNS, connect, TLS, timeout)
  (the query string is never printed: it may carry a key)
then the outcome:
  completed <return value>
  moved (delayed) | moved (waiting-children)
  failed (retry|retry-after <n> ms|unrecoverable|trap|timeout|error): <reason>
    (error: the host found the attempt failed: it could not instantiate the
    component, the return value is over the limit, `moved` without a move)
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
pub(crate) struct RunArgs {
    /// The processor: a WebAssembly component of the bullpen:processor world.
    pub(crate) file: PathBuf,
    /// The job's data, as JSON.
    #[arg(long, default_value = "{}")]
    pub(crate) data: String,
    /// Job name.
    #[arg(long, default_value = "job")]
    pub(crate) name: String,
    /// Job id ("1": a queue's first job id in BullMQ).
    #[arg(long, default_value = "1")]
    pub(crate) id: String,
    /// The job's queue name (children may go to it and to
    /// '<queue>-children' unless --child-queue says otherwise).
    #[arg(long, default_value = "local")]
    pub(crate) queue: String,
    /// BullMQ job options, as JSON (e.g. '{"attempts":3}').
    #[arg(long, default_value = "{}")]
    pub(crate) opts: String,
    /// BullMQ `attemptsMade`: attempts before this one.
    #[arg(long, default_value_t = 0)]
    pub(crate) attempts_made: u32,
    /// What children-values returns: a JSON object of child key
    /// ('bull:<queue>:<id>') to return value. Default: none.
    #[arg(long)]
    pub(crate) children_values: Option<String>,
    /// A queue the guest may add children to (repeatable; '*' for any).
    /// Default: --queue and '<queue>-children', as for `worker`.
    #[arg(long = "child-queue")]
    pub(crate) child_queues: Vec<String>,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    #[command(flatten)]
    pub(crate) grants: GrantArgs,
    /// Run attempts as a worker would until the job completes or fails for
    /// good: again after a move, or after a failure while --opts `attempts`
    /// allow one more (without waiting for delays).
    #[arg(long)]
    pub(crate) until_done: bool,
    /// One JSON object per event instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What the guest may reach and read: the worker's grants, for one run.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct GrantArgs {
    /// An origin the guest may call over HTTP(S) (repeatable), as for
    /// `worker`: https://api.example.com, https://*.example.com,
    /// http://127.0.0.1:8080. Default: none.
    #[arg(long = "allow-outbound", value_name = "PATTERN")]
    pub(crate) allow_outbound: Vec<String>,
    /// A PEM file of CA certificates trusted for HTTPS besides the public roots (repeatable).
    #[arg(long = "http-ca", value_name = "FILE")]
    pub(crate) http_ca: Vec<PathBuf>,
    /// Largest HTTP response body the guest may read, in MiB [default: 16].
    #[arg(long)]
    pub(crate) max_http_response_mb: Option<u64>,
    /// A variable the guest reads with `variable("KEY")` (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    pub(crate) var: Vec<(String, VarSource)>,
    /// A variable read from an environment variable (repeatable).
    #[arg(long = "var-env", value_name = "KEY=ENVNAME", value_parser = parse_var_env)]
    pub(crate) var_env: Vec<(String, VarSource)>,
}

impl GrantArgs {
    fn grants(&self, queue: &str, report: Report) -> anyhow::Result<Grants> {
        Settings {
            allowed_outbound_hosts: Some(self.allow_outbound.clone()),
            http_ca: Some(self.http_ca.clone()),
            max_http_response_mb: self.max_http_response_mb,
            var: Some(self.var.clone()),
            var_env: Some(self.var_env.clone()),
            ..Settings::default()
        }
        .grants(queue, Some(report))
    }
}

/// Print an attempt's verdict as `bullpen run`'s last line for it.
fn print_verdict(v: &Verdict, report: Report) {
    let failed = |kind: &str, reason: &str, delay_ms: Option<u64>| {
        let label = match delay_ms {
            Some(ms) => format!("{kind} {ms} ms"),
            None => kind.to_string(),
        };
        let mut j = json!({ "event": "failed", "kind": kind, "reason": reason });
        if let Some(ms) = delay_ms {
            j["delayMs"] = ms.into();
        }
        report.event(&format!("failed ({label}): {reason}"), j);
    };
    match v {
        Verdict::Completed(json) => {
            let value: Value = serde_json::from_str(json).unwrap_or(Value::Null);
            report.event(&format!("completed {json}"), json!({ "event": "completed", "returnvalue": value }));
        }
        Verdict::Moved(m) => {
            let to = m.to();
            if *m == Moved::RateLimited {
                report.event(
                    &format!("moved ({to}, queue rate-limited)"),
                    json!({ "event": "moved", "to": to, "rateLimited": true }),
                );
            } else {
                report.event(&format!("moved ({to})"), json!({ "event": "moved", "to": to }));
            }
        }
        Verdict::Retry(r) => failed("retry", r, None),
        Verdict::RetryAfter { reason, delay_ms } => failed("retry-after", reason, Some(*delay_ms)),
        Verdict::Unrecoverable(r) => failed("unrecoverable", r, None),
        Verdict::Error(r) => failed("error", r, None),
        Verdict::Trap { reason, .. } => failed("trap", reason, None),
        Verdict::Limit { which: LimitKind::Timeout, reason, .. } => failed("timeout", reason, None),
        // Memory and fuel end in a trap: named by the limit in the reason.
        Verdict::Limit { reason, .. } => failed("trap", reason, None),
        // Neither happens without Redis or a shutdown.
        Verdict::LockLost | Verdict::Interrupted => failed("error", v.label(), None),
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
    grants: Arc<Grants>,
}

pub(crate) async fn run(a: RunArgs) -> anyhow::Result<()> {
    let report = Report { json: a.json, quiet: false };
    let (mut s, mut local) = match setup(&a, report) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Err(ExitStatus(2).into());
        }
    };
    for run in 1..=MAX_RUNS {
        let verdict;
        (verdict, local) = attempt(&s, local).await;
        print_verdict(&verdict, report);
        let again = match &verdict {
            Verdict::Completed(_) => return Ok(()),
            Verdict::Moved(_) if !a.until_done => return Ok(()),
            Verdict::Moved(m) => {
                s.job.attempts_started += 1;
                format!(
                    "after {}",
                    match m {
                        Moved::Delayed => "move-to-delayed, not waiting",
                        Moved::WaitingChildren => "the children finished",
                        Moved::RateLimited => "rate-limit, not waiting",
                        Moved::Waiting => "move-to-wait",
                    }
                )
            }
            failed => {
                // BullMQ's rule: retry while attemptsMade + 1 < attempts.
                let retries = !matches!(failed, Verdict::Unrecoverable(_)) && s.job.attempts_made + 1 < s.attempts;
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
    let data: Value = super::parse_json("--data", &a.data)?;
    let opts: bullmq::JobOptions = serde_json::from_str(&a.opts)
        .with_context(|| format!("--opts is not valid BullMQ job options: {:?}", a.opts))?;
    let children_values: Vec<(String, String)> = match &a.children_values {
        None => Vec::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
            Ok(_) => {
                anyhow::bail!("--children-values must be a JSON object of child key to return value, got {text:?}")
            }
            Err(e) => anyhow::bail!("--children-values is not valid JSON: {e}: {text:?}"),
        },
    };
    let limits = a.limits.limits();
    // The guest sees data and opts as a worker passes them: compact JSON.
    let data = data.to_string();
    if data.len() > limits.max_payload_bytes {
        return Err(InputError::DataTooLarge { bytes: data.len(), limit: limits.max_payload_bytes }.into());
    }
    let grants = Arc::new(a.grants.grants(&a.queue, report)?);
    let engine = new_engine_with(EngineOptions { fuel: limits.fuel.is_some() })?;
    let linker = new_linker(&engine)?;
    let bytes = std::fs::read(&a.file).map_err(|cause| PluginError::Read { path: a.file.clone(), cause })?;
    if will_compile(&engine, &bytes) {
        // The wait that follows (seconds for JS) is the compile, once per version.
        eprintln!("compiling (first load of this version)…");
    }
    let plugin = Plugin::from_bytes(&engine, &linker, &bytes, &a.file.display().to_string())?;
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
    let local = LocalJob::new(
        data,
        children_values,
        limits.clone(),
        ChildQueues::from_flags(&a.queue, &a.child_queues),
        report,
        grants.clone(),
    );
    Ok((Setup { plugin, engine, attempts: opts.attempts.unwrap_or(0), limits, job, grants }, local))
}

/// One attempt through the worker's execution core and verdict; returns
/// the job for the next.
async fn attempt(s: &Setup, mut local: LocalJob) -> (Verdict, LocalJob) {
    let limits = &s.limits;
    let mut p = exec::prepare(&s.engine, limits, None, |out| {
        local.next_attempt(out.clone());
        Backend::Local(local)
    });
    let called = exec::call(&mut p.store, None, &s.plugin, limits, &s.job).await;
    let memory_hit = p.store.data().memory.hit;
    let stacktrace = p.store.data_mut().stacktrace.take();
    let Backend::Local(local) = p.store.into_data().job else { unreachable!("`bullpen run` attempts run in memory") };
    let lines = local.flush_output();
    let v = verdict(Ended {
        called: called.result,
        memory_hit,
        moved: local.moved,
        lock_lost: false,
        output: &lines,
        limits,
    });
    // What a worker would append to the job's `stacktrace` (printed before
    // the verdict's line).
    if let (Some(stack), Verdict::Retry(_) | Verdict::RetryAfter { .. } | Verdict::Unrecoverable(_)) = (stacktrace, &v)
    {
        local.report.event(&format!("stacktrace:\n{stack}"), json!({ "event": "stacktrace", "stack": stack }));
    }
    (v, local)
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
        let limits = Limits::default();
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
        let grants = Arc::new(Grants::none("bench"));
        Ok(BenchAttempt { setup: Setup { plugin, engine, attempts: 0, limits, job, grants } })
    }

    /// Run one attempt in the instance `warm` holds, or a fresh one (kept
    /// for the next call if `warm` reuses, as `--instance-reuse` does);
    /// true when it completed.
    pub async fn once(&self, warm: &mut BenchWarm) -> bool {
        let s = &self.setup;
        let job = |out: &CapturedOutput| {
            let mut local = LocalJob::new(
                s.job.data.clone(),
                Vec::new(),
                s.limits.clone(),
                ChildQueues::Any,
                Report { json: false, quiet: true },
                s.grants.clone(),
            );
            local.next_attempt(out.clone());
            Backend::Local(local)
        };
        let mut p = exec::prepare(&s.engine, &s.limits, warm.kept.take(), job);
        let called = exec::call(&mut p.store, p.instance, &s.plugin, &s.limits, &s.job).await;
        if let (true, Some(instance)) = (warm.reuse, called.instance) {
            warm.kept = Some(Kept { store: p.store, instance, out: p.out });
        }
        matches!(called.result, Ok(Ok(wit::Outcome::Completed(_))))
    }
}

/// Whether [`BenchAttempt::once`] runs in a fresh instance each time, or
/// keeps its instance for the next call.
pub struct BenchWarm {
    reuse: bool,
    kept: Option<Kept>,
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
