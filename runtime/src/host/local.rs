//! The in-memory job behind `bullpen run`: the same `job-context` calls and
//! argument checks as a worker's, acting on a job held in memory instead of
//! Redis, and printing every call (and the guest's output) as it happens.

use std::io::Write;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{check_child, check_json_arg, check_log_line, ChildQueues, Grants, Moved};
use crate::bindings::types::JobError;
use crate::sandbox::{truncate_utf8, CapturedOutput, Limits};

/// Text-mode arguments longer than this are cut (the byte count is shown);
/// `--json` prints accepted arguments whole.
const SHOWN_ARG_BYTES: usize = 2000;

/// Where `bullpen run` prints events: one line each on stdout, readable text
/// or (`--json`) one JSON object with an `event` field.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Report {
    pub(crate) json: bool,
    /// Print nothing (the attempt-overhead benchmark).
    pub(crate) quiet: bool,
}

impl Report {
    /// Print one event. Flushed at once, so a guest that hangs later still
    /// shows what it did before.
    pub(crate) fn event(&self, text: &str, json: Value) {
        if self.quiet {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = if self.json { writeln!(out, "{json}") } else { writeln!(out, "{text}") };
        let _ = out.flush();
    }
}

/// One job in memory, for one attempt.
pub(crate) struct LocalJob {
    /// `bullpen run`'s `--allow-outbound`, `--var`, `--http-ca`.
    pub(crate) grants: Arc<Grants>,
    limits: Limits,
    child_queues: ChildQueues,
    output: CapturedOutput,
    pub(crate) report: Report,
    /// The job data as the guest last wrote it (`update-data`).
    pub(crate) data: String,
    /// Ids of the children added and not yet waited for (nothing runs
    /// them here; BullMQ dedups a repeated `jobId`).
    children: Vec<String>,
    /// Children the job waited for in an earlier attempt: done.
    done_children: Vec<String>,
    /// What `children-values` returns (`--children-values`).
    children_values: Vec<(String, String)>,
    /// Set when `move-to-delayed`, `rate-limit`, `move-to-wait` or
    /// `wait-for-children` moved the job.
    pub(crate) moved: Option<Moved>,
}

impl LocalJob {
    pub(crate) fn new(
        data: String,
        children_values: Vec<(String, String)>,
        limits: Limits,
        child_queues: ChildQueues,
        report: Report,
        grants: Arc<Grants>,
    ) -> Self {
        LocalJob {
            grants,
            limits,
            child_queues,
            // Each attempt brings its own (`next_attempt`).
            output: CapturedOutput::new(0),
            report,
            data,
            children: Vec::new(),
            done_children: Vec::new(),
            children_values,
            moved: None,
        }
    }

    /// Ready for an attempt, whose stdout/stderr is `output`. After a first
    /// attempt (`--until-done`) the data is as the guest updated it, and
    /// children the job waited for count as finished.
    pub(crate) fn next_attempt(&mut self, output: CapturedOutput) {
        if self.moved == Some(Moved::WaitingChildren) {
            self.done_children.append(&mut self.children);
        }
        self.moved = None;
        self.output = output;
    }

    /// Print what the guest wrote to stdout/stderr so far, one `output`
    /// event per line (bounded as a worker bounds what goes to the job
    /// log), and return those lines.
    pub(crate) fn flush_output(&self) -> Vec<String> {
        let lines = self.output.take_lines(self.limits.max_log_line_bytes);
        for line in &lines {
            self.report.event(&format!("output {}", quote(line)), json!({ "event": "output", "line": line }));
        }
        lines
    }

    /// Print one host call: its arguments and what it returned (or why it
    /// was refused), after the output the guest wrote before calling.
    fn record<T>(
        &self,
        call: &str,
        args: &[(&str, Arg)],
        result: Result<T, JobError>,
        show: impl Fn(&T) -> Option<(String, Value)>,
    ) -> Result<T, JobError> {
        self.flush_output();
        let accepted = result.is_ok();
        let mut text = call.to_string();
        let mut obj = Map::new();
        obj.insert("event".into(), call.into());
        for (name, arg) in args {
            let (t, v) = arg.show(accepted);
            if !t.is_empty() {
                text.push(' ');
                text.push_str(&t);
            }
            obj.insert((*name).into(), v);
        }
        match &result {
            Ok(r) => {
                if let Some((t, v)) = show(r) {
                    text.push_str(&format!(" -> {t}"));
                    obj.insert("result".into(), v);
                }
            }
            Err(e) => {
                let (kind, message) = error_parts(e);
                text.push_str(&format!(" -> refused ({kind}): {message}"));
                obj.insert("error".into(), json!({ "kind": kind, "message": message }));
            }
        }
        self.report.event(&text, Value::Object(obj));
        result
    }

    fn moved_already(&self) -> Result<(), JobError> {
        match self.moved {
            Some(_) => Err(JobError::WrongState("the job was already moved in this attempt".into())),
            None => Ok(()),
        }
    }

    pub(crate) fn update_data(&mut self, data: String) -> Result<(), JobError> {
        let r = check_json_arg("data", &data, self.limits.max_payload_bytes);
        if r.is_ok() {
            self.data = data.clone();
        }
        self.record("update-data", &[("data", Arg::Json(&data))], r, |_| None)
    }

    pub(crate) fn update_progress(&mut self, progress: String) -> Result<(), JobError> {
        let r = check_json_arg("progress", &progress, self.limits.max_log_line_bytes);
        self.record("update-progress", &[("progress", Arg::Json(&progress))], r, |_| None)
    }

    pub(crate) fn log(&mut self, line: String) -> Result<(), JobError> {
        let r = check_log_line(&line, &self.limits);
        self.record("log", &[("line", Arg::Text(&line))], r, |_| None)
    }

    pub(crate) fn move_to_delayed(&mut self, timestamp_ms: u64) -> Result<(), JobError> {
        let r = self.moved_already();
        if r.is_ok() {
            self.moved = Some(Moved::Delayed);
        }
        let delay = timestamp_ms.saturating_sub(crate::now_ms());
        let args = [
            ("timestamp", Arg::Plain(timestamp_ms.to_string(), timestamp_ms.into())),
            ("delayMs", Arg::Plain(format!("(in {delay} ms)"), delay.into())),
        ];
        self.record("move-to-delayed", &args, r, |_| None)
    }

    pub(crate) fn rate_limit(&mut self, delay_ms: u64) -> Result<(), JobError> {
        let r = super::check_rate_limit(delay_ms).and_then(|()| self.moved_already());
        if r.is_ok() {
            self.moved = Some(Moved::RateLimited);
        }
        let args = [("delayMs", Arg::Plain(format!("{delay_ms} ms"), delay_ms.into()))];
        self.record("rate-limit", &args, r, |_| None)
    }

    pub(crate) fn move_to_wait(&mut self) -> Result<(), JobError> {
        let r = self.moved_already();
        if r.is_ok() {
            self.moved = Some(Moved::Waiting);
        }
        self.record("move-to-wait", &[], r, |_| None)
    }

    pub(crate) fn add_child(
        &mut self,
        queue: String,
        name: String,
        data: String,
        opts: String,
    ) -> Result<String, JobError> {
        let r = check_child(&self.child_queues, &self.limits, &queue, &data, &opts).map(|(_, child_opts)| {
            // A custom jobId is kept (a re-added one is the same child, as
            // in BullMQ); otherwise ids count up, as BullMQ's do per queue.
            let n = self.children.len() + self.done_children.len() + 1;
            let id = child_opts.job_id.unwrap_or_else(|| format!("child-{n}"));
            if !self.children.contains(&id) && !self.done_children.contains(&id) {
                self.children.push(id.clone());
            }
            id
        });
        let opts_shown = if opts.trim().is_empty() { "{}" } else { opts.as_str() };
        let args = [
            ("queue", Arg::Named("queue", &queue)),
            ("name", Arg::Named("name", &name)),
            ("data", Arg::NamedJson("data", &data)),
            ("opts", Arg::NamedJson("opts", opts_shown)),
        ];
        self.record("add-child", &args, r, |id| Some((id.clone(), id.as_str().into())))
    }

    /// True when children were added and not yet waited for: nothing runs
    /// them here, so they are all pending.
    pub(crate) fn wait_for_children(&mut self) -> Result<bool, JobError> {
        let r = self.moved_already().map(|()| {
            let pending = !self.children.is_empty();
            if pending {
                self.moved = Some(Moved::WaitingChildren);
            }
            pending
        });
        self.record("wait-for-children", &[], r, |b| Some((b.to_string(), (*b).into())))
    }

    pub(crate) fn children_values(&mut self) -> Result<Vec<(String, String)>, JobError> {
        let r = Ok(self.children_values.clone());
        self.record("children-values", &[], r, |pairs| {
            let map: Map<String, Value> = pairs.iter().map(|(k, v)| (k.clone(), parse_or_text(v))).collect();
            let v = Value::Object(map);
            Some((v.to_string(), v))
        })
    }
}

/// A host-call argument as printed: text for humans, a value for `--json`.
enum Arg<'a> {
    /// JSON text, printed as the guest wrote it.
    Json(&'a str),
    /// `name=<JSON text>`.
    NamedJson(&'static str, &'a str),
    /// A string, printed quoted.
    Text(&'a str),
    /// `name=<string>`, unquoted.
    Named(&'static str, &'a str),
    /// Already formatted.
    Plain(String, Value),
}

impl Arg<'_> {
    /// Refused arguments are shown as (cut) text in `--json` too: they may be
    /// neither JSON nor small.
    fn show(&self, accepted: bool) -> (String, Value) {
        let json = |s: &str| if accepted { parse_or_text(s) } else { Value::String(clip(s)) };
        match self {
            Arg::Json(s) => (clip(s), json(s)),
            Arg::NamedJson(n, s) => (format!("{n}={}", clip(s)), json(s)),
            Arg::Text(s) => (quote(&clip(s)), if accepted { (*s).into() } else { clip(s).into() }),
            Arg::Named(n, s) => (format!("{n}={s}"), (*s).into()),
            Arg::Plain(t, v) => (t.clone(), v.clone()),
        }
    }
}

fn parse_or_text(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

fn clip(s: &str) -> String {
    if s.len() <= SHOWN_ARG_BYTES {
        return s.to_string();
    }
    format!("{}… ({} bytes)", truncate_utf8(s, SHOWN_ARG_BYTES), s.len())
}

/// A string as a JSON string literal: quoted, control characters escaped.
fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// `job-error` as (WIT case name, message).
fn error_parts(e: &JobError) -> (&'static str, String) {
    match e {
        JobError::LockLost => ("lock-lost", "the job's lock was lost".into()),
        JobError::WrongState(m) => ("wrong-state", m.clone()),
        JobError::Invalid(m) => ("invalid", m.clone()),
        JobError::Unavailable(m) => ("unavailable", m.clone()),
    }
}
