//! webhook: POST a signed JSON payload. The contract (the same in Rust, Go
//! and JavaScript; tests and users rely on it):
//!
//! - data `{"url": string, "payload": any}`;
//! - POSTs `JSON.stringify(payload)` with `content-type: application/json`
//!   and `x-bullpen-signature: sha256=<hex HMAC-SHA256 of the body>`, keyed
//!   with the queue's variable `webhook_secret`;
//! - 2xx: completed with `{"status": <code>, "body": <first 1024 bytes of the
//!   response as text>}`;
//! - 429 or 5xx: retry after the response's `Retry-After` seconds (else
//!   1000 ms), reason `HTTP <code>`;
//! - any other status: unrecoverable, reason `HTTP <code>`;
//! - a network error or a denied host: retry, naming the error;
//! - `webhook_secret` not set: unrecoverable, saying so.
use bullpen_guest::{http, variable, Job, JobError, Outcome};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

#[derive(Deserialize)]
struct Data<'a> {
    url: String,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// The return value, fields in the contract's order.
#[derive(Serialize)]
struct Done<'a> {
    status: u16,
    body: &'a str,
}

fn process(job: &Job) -> Result<Outcome, JobError> {
    let data: Data = serde_json::from_str(job.data_json())?;
    let secret = variable("webhook_secret")?;
    // The payload's text as the producer stored it (BullMQ stores
    // JSON.stringify's output), whitespace removed: JSON.stringify(payload).
    let body = compact(data.payload.get());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let res = http::post(&data.url)
        .header("content-type", "application/json")
        .header("x-bullpen-signature", signature)
        .body(body)
        .send()?;
    match res.status {
        200..=299 => {
            let head = &res.body[..res.body.len().min(1024)];
            Outcome::complete(&Done { status: res.status, body: &String::from_utf8_lossy(head) })
        }
        429 | 500..=599 => {
            let delay_ms = res
                .header("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(1000, |s| s.saturating_mul(1000));
            Err(JobError::retry_after(format!("HTTP {}", res.status), delay_ms))
        }
        code => Err(JobError::unrecoverable(format!("HTTP {code}"))),
    }
}

/// JSON text without the whitespace between tokens.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

bullpen_guest::export_processor!(process);
