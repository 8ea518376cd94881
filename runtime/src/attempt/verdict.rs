//! What one attempt did, as a value: [`verdict`] maps what the guest
//! returned, trapped or hit to a [`Verdict`], without Redis or wasmtime
//! state. The worker maps a verdict to BullMQ's transition
//! (`queue::trigger`), `bullpen run` to its printed line; neither re-derives
//! it. Traps are told apart by wasmtime's typed [`Trap`] and the memory
//! limiter's record, never by error text.

use wasmtime::Trap;

use super::exec::CallError;
use crate::bindings::types::{Failure, Outcome};
use crate::host::Moved;
use crate::sandbox::Limits;

/// How an attempt ended. Each failure carries the reason that becomes the
/// job's `failedReason`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// `process` returned `completed` with this JSON text, checked: it
    /// parses and fits the payload limit.
    Completed(String),
    /// A host call moved the job (`move-to-delayed`, `wait-for-children`)
    /// and `process` returned `moved`: the attempt ends, nothing is finished.
    Moved(Moved),
    /// The guest returned `failure::retry`: retried per the job's attempts
    /// and backoff (including custom backoff and jitter).
    Retry(String),
    /// The guest returned `failure::retry-after`: its own delay.
    RetryAfter { reason: String, delay_ms: u64 },
    /// No more attempts: the guest said so, or returned a value that is
    /// not JSON (no attempt would do better), or the job could not be given
    /// to a guest at all.
    Unrecoverable(String),
    /// The host found the attempt failed (it could not instantiate the
    /// component, the return value is over the payload limit, `moved`
    /// without a move): retried per attempts and plain backoff.
    Error(String),
    /// The guest trapped.
    Trap { kind: TrapKind, reason: String },
    /// A sandbox limit stopped the guest; `trap` is the trap it caused, if
    /// it ended in one (a refused memory grow usually ends in `unreachable`).
    Limit { which: LimitKind, trap: Option<TrapKind>, reason: String },
    /// The job's lock was lost during the attempt: another worker owns it,
    /// and this one writes nothing more.
    LockLost,
    /// Shutdown interrupted the attempt past its grace period: the job goes
    /// back to wait, its attempt not counted.
    Interrupted,
}

/// The trap a guest hit, from wasmtime's [`Trap`] (metrics `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrapKind {
    /// `unreachable`: Rust panics, Go and JS aborts end here.
    Unreachable,
    /// The wasm stack overflowed (guests whose stack is wasm's own).
    StackOverflow,
    /// A load or store outside linear memory: a guest bug, or a stack kept
    /// in linear memory (Rust's, C's) overflowing.
    OutOfBounds,
    DivisionByZero,
    /// Interrupted by the engine's epoch.
    Interrupt,
    /// Anything else (out of fuel included).
    Other,
}

impl TrapKind {
    fn of(e: &wasmtime::Error) -> TrapKind {
        match e.downcast_ref::<Trap>() {
            Some(Trap::UnreachableCodeReached) => TrapKind::Unreachable,
            Some(Trap::StackOverflow) => TrapKind::StackOverflow,
            Some(Trap::MemoryOutOfBounds) => TrapKind::OutOfBounds,
            Some(Trap::IntegerDivisionByZero) => TrapKind::DivisionByZero,
            Some(Trap::Interrupt) => TrapKind::Interrupt,
            _ => TrapKind::Other,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            TrapKind::Unreachable => "unreachable",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::OutOfBounds => "out_of_bounds",
            TrapKind::DivisionByZero => "division_by_zero",
            TrapKind::Interrupt => "interrupt",
            TrapKind::Other => "other",
        }
    }
}

/// The sandbox limit that stopped an attempt (metrics `limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitKind {
    /// `--timeout-ms`.
    Timeout,
    /// `--max-memory-mb`.
    Memory,
    /// `--fuel`.
    Fuel,
}

impl LimitKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            LimitKind::Timeout => "timeout",
            LimitKind::Memory => "memory",
            LimitKind::Fuel => "fuel",
        }
    }
}

impl Verdict {
    /// A short stable name (logs).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Verdict::Completed(_) => "completed",
            Verdict::Moved(Moved::Delayed) => "delayed",
            Verdict::Moved(Moved::WaitingChildren) => "waiting_children",
            Verdict::Moved(Moved::RateLimited) => "rate_limited",
            Verdict::Moved(Moved::Waiting) => "waiting",
            Verdict::Retry(_) => "retry",
            Verdict::RetryAfter { .. } => "retry_after",
            Verdict::Unrecoverable(_) => "unrecoverable",
            Verdict::Error(_) => "error",
            Verdict::Trap { .. } => "trap",
            Verdict::Limit { which, .. } => which.label(),
            Verdict::LockLost => "lock_lost",
            Verdict::Interrupted => "interrupted",
        }
    }
}

/// Everything [`verdict`] looks at, read from the attempt's store after the call.
pub(crate) struct Ended<'a> {
    pub(crate) called: Result<Result<Outcome, Failure>, CallError>,
    /// The size the guest asked for when the memory cap refused a grow.
    pub(crate) memory_hit: Option<usize>,
    /// How a host call ended the attempt early, if one did.
    pub(crate) moved: Option<Moved>,
    /// The job's lock was found lost (by a host call or a flush).
    pub(crate) lock_lost: bool,
    /// What the guest printed (a Rust panic's message is there).
    pub(crate) output: &'a [String],
    pub(crate) limits: &'a Limits,
}

/// What an attempt's end means, in bullpen's terms.
pub(crate) fn verdict(e: Ended<'_>) -> Verdict {
    if e.lock_lost {
        return Verdict::LockLost;
    }
    let limits = e.limits;
    match e.called {
        Err(CallError::Trap(err)) => trapped(&err, e.memory_hit, limits, e.output),
        Err(CallError::Timeout) => Verdict::Limit {
            which: LimitKind::Timeout,
            trap: None,
            reason: format!("attempt timed out: exceeded the wall-clock limit of {} ms (--timeout-ms)", limits.timeout.as_millis()),
        },
        Err(e @ CallError::Instantiate(_)) => Verdict::Error(e.to_string()),
        Ok(Ok(Outcome::Completed(json))) => completed(json, limits),
        Ok(Ok(Outcome::Moved)) => match e.moved {
            Some(m) => Verdict::Moved(m),
            None => Verdict::Error(
                "processor returned `moved` but no host call moved the job (call move-to-delayed or wait-for-children first)".into(),
            ),
        },
        // The guest caught a refused memory grow (SpiderMonkey throws "out
        // of memory", the JS SDK fails the attempt with it): the limit is
        // still why, as when the refusal ends in a trap.
        Ok(Err(failure)) if e.memory_hit.is_some() => {
            let wanted = e.memory_hit.unwrap_or_default();
            let reason = format!(
                "out of memory: the guest tried to grow its memory to {}, over the limit of {} (--max-memory-mb); then it failed: {}",
                mib(wanted),
                mib(limits.max_memory_bytes),
                failure_reason(&failure)
            );
            Verdict::Limit { which: LimitKind::Memory, trap: None, reason }
        }
        Ok(Err(Failure::Retry(reason))) => Verdict::Retry(reason),
        Ok(Err(Failure::RetryAfter(r))) => Verdict::RetryAfter { reason: r.reason, delay_ms: r.delay_ms },
        Ok(Err(Failure::Unrecoverable(reason))) => Verdict::Unrecoverable(reason),
    }
}

/// The failedReason a guest's failure asks for.
fn failure_reason(f: &Failure) -> &str {
    match f {
        Failure::Retry(r) | Failure::Unrecoverable(r) => r,
        Failure::RetryAfter(r) => &r.reason,
    }
}

/// A completed attempt's return value (the guest's JSON text) is stored
/// only if it fits the payload limit and parses, checked without building
/// a value: it is handed to bullmq-official as it is.
fn completed(json: String, limits: &Limits) -> Verdict {
    if json.len() > limits.max_payload_bytes {
        return Verdict::Error(format!(
            "return value is {} bytes; the limit is {}",
            json.len(),
            limits.max_payload_bytes
        ));
    }
    match crate::json::check(&json) {
        Ok(()) => Verdict::Completed(json),
        Err(problem) => Verdict::Unrecoverable(format!("return value {problem}")),
    }
}

/// A trap, named by the limit that caused it (memory, fuel) or by itself
/// and, for a Rust panic, the panic message the guest printed.
fn trapped(err: &wasmtime::Error, memory_hit: Option<usize>, limits: &Limits, output: &[String]) -> Verdict {
    let kind = TrapKind::of(err);
    let text = trap_text(err);
    if let Some(wanted) = memory_hit {
        let reason = format!(
            "out of memory: the guest tried to grow its memory to {}, over the limit of {} (--max-memory-mb); trap: {text}",
            mib(wanted),
            mib(limits.max_memory_bytes)
        );
        return Verdict::Limit { which: LimitKind::Memory, trap: Some(kind), reason };
    }
    if err.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
        let reason = format!(
            "out of fuel: the attempt used up its {} units of fuel (--fuel); {text}",
            limits.fuel.unwrap_or_default()
        );
        return Verdict::Limit { which: LimitKind::Fuel, trap: Some(kind), reason };
    }
    Verdict::Trap { kind, reason: with_panic_message(text, output) }
}

/// "wasm trap: " and what the trap was, said once.
fn trap_text(err: &wasmtime::Error) -> String {
    let name = match err.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => "stack overflow (the guest recursed past its 1 MiB wasm stack)".to_string(),
        Some(Trap::UnreachableCodeReached) => "unreachable instruction executed".to_string(),
        Some(Trap::MemoryOutOfBounds) => {
            "out-of-bounds memory access (a guest bug, or a stack kept in linear memory, as Rust's, overflowing)"
                .to_string()
        }
        Some(Trap::IntegerDivisionByZero) => "integer division by zero".to_string(),
        Some(Trap::Interrupt) => "interrupted".to_string(),
        Some(t) => t.to_string(),
        None => format!("{err:#}"),
    };
    // wasmtime's own texts may already start with the prefix.
    format!("wasm trap: {}", name.strip_prefix("wasm trap: ").unwrap_or(&name))
}

/// A Rust guest's panic prints `... panicked at file:line:col:` and the
/// message to stderr before trapping; put them in the failedReason.
fn with_panic_message(trap: String, lines: &[String]) -> String {
    match lines.iter().position(|l| l.contains("panicked at")) {
        Some(i) => {
            let msg = lines.get(i + 1).map(String::as_str).unwrap_or("");
            format!("{trap} (guest panicked: {msg}; {})", lines[i].trim())
        }
        None => trap,
    }
}

/// Bytes as MiB, with two decimals unless whole (a grow of 64 KiB past a
/// 32 MiB cap must not read "32 MiB, over the limit of 32 MiB").
fn mib(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bindings::types::RetryAfter;

    fn limits() -> Limits {
        Limits {
            max_payload_bytes: 16,
            max_memory_bytes: 32 << 20,
            fuel: Some(1000),
            timeout: Duration::from_millis(500),
            ..Limits::default()
        }
    }

    /// The verdict of a call that ended with `called`, nothing else noted.
    fn of(called: Result<Result<Outcome, Failure>, CallError>) -> Verdict {
        verdict(Ended { called, memory_hit: None, moved: None, lock_lost: false, output: &[], limits: &limits() })
    }

    fn trap(t: Trap) -> Result<Result<Outcome, Failure>, CallError> {
        Err(CallError::Trap(wasmtime::Error::new(t)))
    }

    #[test]
    fn a_failure_after_a_refused_grow_is_the_memory_limit() {
        let called = Ok(Err(Failure::Retry("out of memory".into())));
        let v = verdict(Ended {
            called,
            memory_hit: Some(64 << 20),
            moved: None,
            lock_lost: false,
            output: &[],
            limits: &limits(),
        });
        let reason = "out of memory: the guest tried to grow its memory to 64 MiB, over the limit of 32 MiB (--max-memory-mb); then it failed: out of memory";
        assert_eq!(v, Verdict::Limit { which: LimitKind::Memory, trap: None, reason: reason.into() });
    }

    #[test]
    fn completed_values_are_checked_json_within_the_limit() {
        for ok in ["null", "1e3", " {\"a\":[1,2]} ", "\"\\u00e9\""] {
            assert_eq!(of(Ok(Ok(Outcome::Completed(ok.into())))), Verdict::Completed(ok.into()));
        }
        for bad in ["", "{", "{\"a\":1} x", "nul", "'a'", "[1,]"] {
            match of(Ok(Ok(Outcome::Completed(bad.into())))) {
                Verdict::Unrecoverable(m) => assert!(m.starts_with("return value is not valid JSON"), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        let too_deep = Verdict::Unrecoverable(
            "return value is nested more than 127 levels deep (bullpen's limit for JSON)".into(),
        );
        let called = Ok(Ok(Outcome::Completed(deep)));
        let big = Limits::default();
        assert_eq!(
            verdict(Ended { called, memory_hit: None, moved: None, lock_lost: false, output: &[], limits: &big }),
            too_deep
        );
        assert_eq!(
            of(Ok(Ok(Outcome::Completed("[1,2,3,4,5,6,7,8,9]".into())))),
            Verdict::Error("return value is 19 bytes; the limit is 16".into())
        );
    }

    #[test]
    fn guest_failures_keep_their_reason_and_delay() {
        assert_eq!(of(Ok(Err(Failure::Retry("r".into())))), Verdict::Retry("r".into()));
        assert_eq!(of(Ok(Err(Failure::Unrecoverable("u".into())))), Verdict::Unrecoverable("u".into()));
        let after = Failure::RetryAfter(RetryAfter { reason: "a".into(), delay_ms: 5 });
        assert_eq!(of(Ok(Err(after))), Verdict::RetryAfter { reason: "a".into(), delay_ms: 5 });
    }

    #[test]
    fn moved_needs_a_move() {
        for m in [Moved::Delayed, Moved::WaitingChildren, Moved::RateLimited, Moved::Waiting] {
            let v = verdict(Ended {
                called: Ok(Ok(Outcome::Moved)),
                memory_hit: None,
                moved: Some(m),
                lock_lost: false,
                output: &[],
                limits: &limits(),
            });
            assert_eq!(v, Verdict::Moved(m));
        }
        assert!(matches!(of(Ok(Ok(Outcome::Moved))), Verdict::Error(r) if r.contains("no host call moved the job")));
    }

    #[test]
    fn a_lost_lock_overrides_whatever_the_guest_did() {
        let v = verdict(Ended {
            called: Ok(Ok(Outcome::Completed("1".into()))),
            memory_hit: None,
            moved: None,
            lock_lost: true,
            output: &[],
            limits: &limits(),
        });
        assert_eq!(v, Verdict::LockLost);
    }

    #[test]
    fn traps_are_told_apart_by_type_and_say_wasm_trap_once() {
        let cases = [
            (Trap::UnreachableCodeReached, TrapKind::Unreachable, "wasm trap: unreachable instruction executed"),
            (Trap::StackOverflow, TrapKind::StackOverflow, "wasm trap: stack overflow"),
            (Trap::MemoryOutOfBounds, TrapKind::OutOfBounds, "stack kept in linear memory"),
            (Trap::IntegerDivisionByZero, TrapKind::DivisionByZero, "wasm trap: integer division by zero"),
            (Trap::Interrupt, TrapKind::Interrupt, "wasm trap: interrupted"),
            (Trap::TableOutOfBounds, TrapKind::Other, "wasm trap: "),
        ];
        for (t, kind, text) in cases {
            match of(trap(t)) {
                Verdict::Trap { kind: k, reason } => {
                    assert_eq!(k, kind, "{t:?}");
                    assert!(reason.contains(text) && reason.matches("wasm trap").count() == 1, "{t:?}: {reason}");
                }
                other => panic!("{t:?}: {other:?}"),
            }
        }
        // Not a wasmtime trap at all (a host function's error): its text, kind other.
        match of(Err(CallError::Trap(wasmtime::Error::msg("host said no")))) {
            Verdict::Trap { kind: TrapKind::Other, reason } => assert_eq!(reason, "wasm trap: host said no"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_panic_message_joins_the_trap() {
        let output = ["x".to_string(), "panicked at src/lib.rs:3:5:".into(), "boom".into()];
        let v = verdict(Ended {
            called: trap(Trap::UnreachableCodeReached),
            memory_hit: None,
            moved: None,
            lock_lost: false,
            output: &output,
            limits: &limits(),
        });
        let Verdict::Trap { reason, .. } = v else { panic!("{v:?}") };
        assert_eq!(
            reason,
            "wasm trap: unreachable instruction executed (guest panicked: boom; panicked at src/lib.rs:3:5:)"
        );
    }

    #[test]
    fn limits_are_named_with_their_flag() {
        match of(Err(CallError::Timeout)) {
            Verdict::Limit { which: LimitKind::Timeout, trap: None, reason } => {
                assert_eq!(reason, "attempt timed out: exceeded the wall-clock limit of 500 ms (--timeout-ms)")
            }
            other => panic!("{other:?}"),
        }
        match of(trap(Trap::OutOfFuel)) {
            Verdict::Limit { which: LimitKind::Fuel, trap: Some(TrapKind::Other), reason } => {
                assert_eq!(reason, "out of fuel: the attempt used up its 1000 units of fuel (--fuel); wasm trap: all fuel consumed by WebAssembly")
            }
            other => panic!("{other:?}"),
        }
        for (wanted, shown) in [((32 << 20) + (64 << 10), "32.06 MiB"), (64 << 20, "64 MiB")] {
            let v = verdict(Ended {
                called: trap(Trap::UnreachableCodeReached),
                memory_hit: Some(wanted),
                moved: None,
                lock_lost: false,
                output: &[],
                limits: &limits(),
            });
            match v {
                Verdict::Limit { which: LimitKind::Memory, trap: Some(TrapKind::Unreachable), reason } => assert!(
                    reason.starts_with(&format!(
                        "out of memory: the guest tried to grow its memory to {shown}, over the limit of 32 MiB"
                    )),
                    "{reason}"
                ),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn instantiation_failures_are_host_errors() {
        match of(Err(CallError::Instantiate(wasmtime::Error::msg("no")))) {
            Verdict::Error(r) => assert_eq!(r, "cannot instantiate processor: no"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn labels_and_reasons() {
        assert_eq!(Verdict::Moved(Moved::WaitingChildren).label(), "waiting_children");
        assert_eq!(Verdict::Moved(Moved::RateLimited).label(), "rate_limited");
        assert_eq!(Verdict::Moved(Moved::Waiting).label(), "waiting");
        assert_eq!(Verdict::Limit { which: LimitKind::Memory, trap: None, reason: "m".into() }.label(), "memory");
        assert_eq!(Verdict::Interrupted.label(), "interrupted");
    }
}
