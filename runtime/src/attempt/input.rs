//! The job as the guest sees it (`wit::Job`), and the checks a job passes
//! before any instance is made for it.

use crate::bindings::types as wit;
use crate::error::InputError;
use crate::json::{self, JsonProblem};
use crate::sandbox::{truncate_utf8, Limits};

/// The guest's read-only view of the job. Total: never panics, whatever the hash held.
pub(crate) fn to_wit_job(job: &bullmq::Job, queue: &str) -> wit::Job {
    wit::Job {
        id: job.id().to_string(),
        name: job.name().to_string(),
        queue: queue.to_string(),
        data: serde_json::to_string(job.data()).unwrap_or_else(|_| "null".into()),
        opts: serde_json::to_string(job.opts()).unwrap_or_else(|_| "{}".into()),
        attempts_made: job.attempts_made(),
        attempts_started: job.attempts_started(),
        timestamp: job.timestamp(),
        progress: serde_json::to_string(job.progress()).unwrap_or_else(|_| "0".into()),
        parent: job.parent().map(|p| wit::ParentRef {
            id: p.id.clone(),
            queue: p.queue_key.rsplit(':').next().unwrap_or(&p.queue_key).to_string(),
        }),
    }
}

/// bullmq-official turns data it cannot parse (not JSON, or deeper than
/// serde_json reads) into `null`. When a job's data is `null`, `raw` is its
/// `data` field as stored: a job whose field is missing, not JSON or too deep
/// fails with a reason instead of running on made-up input.
pub(crate) fn check_raw_data(raw: Option<&str>) -> Result<(), InputError> {
    match raw {
        None => Err(InputError::MissingData),
        Some(raw) => json::check(raw).map_err(|problem| match problem {
            JsonProblem::TooDeep => InputError::TooDeep,
            JsonProblem::Invalid(cause) => InputError::BadData { cause, start: truncate_utf8(raw, 40).to_string() },
        }),
    }
}

/// The data the guest gets must fit the binding's payload limit.
pub(crate) fn check_size(job: &wit::Job, limits: &Limits) -> Result<(), InputError> {
    if job.data.len() > limits.max_payload_bytes {
        return Err(InputError::DataTooLarge { bytes: job.data.len(), limit: limits.max_payload_bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_data_checks_name_the_cause() {
        assert!(check_raw_data(Some("null")).is_ok());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            check_raw_data(Some(&deep)).unwrap_err().to_string(),
            "job data is nested more than 127 levels deep (bullpen's limit for JSON)"
        );
        assert_eq!(
            check_raw_data(None).unwrap_err().to_string(),
            "job data is missing: the job hash has no `data` field"
        );
        let e = check_raw_data(Some("{not json")).unwrap_err().to_string();
        assert!(
            e.starts_with("job data is not valid JSON: key must be a string")
                && e.ends_with("(data starts with \"{not json\")"),
            "{e}"
        );
    }
}
