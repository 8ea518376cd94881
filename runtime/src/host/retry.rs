//! Retries whose delay bullmq-official cannot compute: a guest's own delay
//! (`failure::retry-after`), `jitter` in `opts.backoff`, and custom backoff
//! types answered by the guest's `backoff` export. The decision follows
//! BullMQ's `shouldRetryJob` (Node's job.ts); the move is BullMQ's own
//! `moveToDelayed` script with `skipAttempt = 0`, so Redis ends up exactly as
//! after a Node worker's delayed retry (atm+1, failedReason, `delayed` event).

use rand::Rng;
use serde_json::Value;

use super::redis_job::{unavailable, with_reconnect};
use super::JobContext;
use crate::bindings::types::JobError;

/// What a retryable failure leads to, when the job has attempts left and a
/// `backoff` in its opts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RetryPlan {
    /// bullmq-official computes it (plain fixed/exponential, or no delay).
    BullmqDoesIt,
    /// Retry after this many ms (a built-in type with `jitter`).
    After(u64),
    /// A custom type: the guest's `backoff` export decides (`n` = attemptsMade + 1).
    AskGuest { kind: String, n: u32 },
}

/// The job's `opts.backoff` as stored in Redis (a number is `fixed`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Backoff {
    pub(crate) kind: String,
    pub(crate) delay: u64,
    pub(crate) jitter: f64,
}

impl Backoff {
    pub(crate) fn from_opts(opts: &Value) -> Option<Backoff> {
        match opts.get("backoff")? {
            Value::Number(n) => Some(Backoff { kind: "fixed".into(), delay: n.as_u64().unwrap_or(0), jitter: 0.0 }),
            Value::Object(o) => Some(Backoff {
                kind: o.get("type").and_then(Value::as_str).unwrap_or("fixed").to_string(),
                delay: o.get("delay").and_then(Value::as_u64).unwrap_or(0),
                jitter: o.get("jitter").and_then(Value::as_f64).unwrap_or(0.0).clamp(0.0, 1.0),
            }),
            _ => None,
        }
    }

    fn is_builtin(&self) -> bool {
        self.kind == "fixed" || self.kind == "exponential"
    }

    /// How attempt `n` (attemptsMade + 1) is retried; `random` in [0, 1)
    /// draws the jitter. bullmq-official applies plain fixed/exponential
    /// backoff itself; bullpen steps in only for what it cannot compute.
    pub(crate) fn plan(&self, n: u32, random: f64) -> RetryPlan {
        if !self.is_builtin() {
            return RetryPlan::AskGuest { kind: self.kind.clone(), n };
        }
        match self.jitter {
            0.0 => RetryPlan::BullmqDoesIt,
            _ => match self.builtin_delay(n, random) {
                0 => RetryPlan::BullmqDoesIt,
                d => RetryPlan::After(d),
            },
        }
    }

    /// BullMQ's `backoffs.ts` for the built-in types; `n` = attemptsMade + 1.
    pub(crate) fn builtin_delay(&self, n: u32, random: f64) -> u64 {
        let max = match self.kind.as_str() {
            "exponential" => (2f64.powi(n.saturating_sub(1) as i32) * self.delay as f64).round(),
            _ => self.delay as f64,
        };
        if self.jitter > 0.0 {
            (random * max * self.jitter + max * (1.0 - self.jitter)).floor() as u64
        } else {
            max as u64
        }
    }
}

/// BullMQ's retry rule: `attemptsMade + 1 < attempts`.
pub(crate) fn attempts_remain(job: &bullmq::Job) -> bool {
    let attempts = job.opts().attempts.unwrap_or(0);
    attempts > 0 && job.attempts_made() + 1 < attempts
}

/// A uniform draw in [0, 1), for jitter.
pub(crate) fn random_unit() -> f64 {
    rand::rng().random::<f64>()
}

impl JobContext {
    /// The job's opts as stored (bullmq-official drops `jitter` when parsing).
    pub(crate) async fn raw_opts(&self) -> Result<Value, JobError> {
        let raw = self.shared.raw_field(&self.id, "opts").await.map_err(unavailable)?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()).unwrap_or(Value::Null))
    }

    /// Fail this attempt and retry the job after `delay_ms`, as a Node worker
    /// does when backoff gives a positive delay.
    pub(crate) async fn retry_later(&mut self, delay_ms: u64, reason: &str) -> Result<(), JobError> {
        use rmp::encode::{write_array_len, write_map_len, write_str, write_uint};
        if self.lock_lost {
            return Err(JobError::LockLost);
        }
        let keys = &self.shared.keys;
        let mut fields = Vec::new();
        write_array_len(&mut fields, 2).unwrap();
        write_str(&mut fields, "failedReason").unwrap();
        write_str(&mut fields, reason).unwrap();
        let mut opts = Vec::new();
        write_map_len(&mut opts, 2).unwrap();
        write_str(&mut opts, "token").unwrap();
        write_str(&mut opts, &self.token).unwrap();
        write_str(&mut opts, "lockDuration").unwrap();
        write_uint(&mut opts, self.shared.lock_duration_ms).unwrap();
        let mut inv = self.shared.scripts.move_to_delayed.prepare_invoke();
        for k in [
            keys.marker(),
            keys.active(),
            keys.prioritized(),
            keys.delayed(),
            self.job_key.clone(),
            self.shared.events_key.clone(),
            self.shared.meta_key.clone(),
            keys.stalled(),
            keys.wait(),
            keys.limiter(),
            keys.pc(),
        ] {
            inv.key(k);
        }
        inv.arg(keys.key_prefix())
            .arg(crate::now_ms().to_string())
            .arg(&self.id)
            .arg(&self.token)
            .arg(delay_ms.to_string())
            .arg("0")
            .arg(fields)
            .arg("0")
            .arg(opts);
        // A retry after a lost reply finds the job moved already: its lock
        // is gone, which ends the attempt the same way.
        let code: redis::Value = with_reconnect(|| {
            let mut conn = self.shared.redis.clone();
            let inv = &inv;
            async move { inv.invoke_async(&mut conn).await }
        })
        .await
        .map_err(unavailable)?;
        match code {
            redis::Value::Int(c) if c < 0 => {
                self.code_to_result(c)?;
                Err(JobError::WrongState(format!("moveToDelayed returned {c}")))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_stored_backoff_forms() {
        assert_eq!(
            Backoff::from_opts(&json!({"backoff": 500})).unwrap(),
            Backoff { kind: "fixed".into(), delay: 500, jitter: 0.0 }
        );
        let b = Backoff::from_opts(&json!({"backoff": {"type": "exponential", "delay": 100, "jitter": 0.5}})).unwrap();
        assert_eq!((b.kind.as_str(), b.delay, b.jitter), ("exponential", 100, 0.5));
        assert!(Backoff::from_opts(&json!({})).is_none());
    }

    #[test]
    fn delays_follow_bullmq_backoffs_ts() {
        let exp = Backoff { kind: "exponential".into(), delay: 100, jitter: 0.0 };
        assert_eq!([1, 2, 3, 4].map(|n| exp.builtin_delay(n, 0.7)), [100, 200, 400, 800]);
        let fixed = Backoff { kind: "fixed".into(), delay: 1000, jitter: 0.0 };
        assert_eq!(fixed.builtin_delay(5, 0.1), 1000);
        // jitter j: uniform in [max*(1-j), max)
        let jit = Backoff { kind: "exponential".into(), delay: 1000, jitter: 0.5 };
        assert_eq!(jit.builtin_delay(2, 0.0), 1000);
        assert_eq!(jit.builtin_delay(2, 0.5), 1500);
        assert!(jit.builtin_delay(2, 0.999_999) < 2000);
    }

    #[test]
    fn plans_step_in_only_where_bullmq_cannot() {
        let plain = Backoff { kind: "exponential".into(), delay: 100, jitter: 0.0 };
        assert_eq!(plain.plan(3, 0.5), RetryPlan::BullmqDoesIt);
        let jit = Backoff { kind: "fixed".into(), delay: 1000, jitter: 0.5 };
        assert_eq!(jit.plan(1, 0.0), RetryPlan::After(500));
        let zero = Backoff { kind: "fixed".into(), delay: 0, jitter: 0.5 };
        assert_eq!(zero.plan(1, 0.9), RetryPlan::BullmqDoesIt);
        let custom = Backoff { kind: "linear".into(), delay: 10, jitter: 0.0 };
        assert_eq!(custom.plan(2, 0.1), RetryPlan::AskGuest { kind: "linear".into(), n: 2 });
    }
}
