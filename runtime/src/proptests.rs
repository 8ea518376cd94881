//! Property tests (the fuzz targets) over the untrusted inputs:
//! the job hash as any producer may have written it, and the arguments a
//! guest passes to host calls. Each property would catch a panic in the
//! worker (which would take every running attempt down with it).

use std::collections::HashMap;

use proptest::prelude::*;

use crate::attempt::input::to_wit_job;
use crate::bindings::types::JobError;
use crate::host::check_json_arg;
use crate::host::retry::Backoff;
use crate::sandbox::{truncate_utf8, CapturedOutput};

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{1,20}",
        Just("null".to_string()),
        Just("{\"attempts\":3,\"backoff\":{\"type\":\"exponential\",\"delay\":10,\"jitter\":0.5}}".to_string()),
        Just("{\"id\":\"1\",\"queueKey\":\"bull:p\"}".to_string()),
        "\\{\"[a-z]{1,5}\":[0-9]{1,5}\\}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any job hash converts into the guest's job without panicking, and the
    /// JSON handed to the guest (data, opts, progress) is always valid.
    #[test]
    fn job_hash_to_guest_job_is_total(
        id in "[a-zA-Z0-9:_-]{1,40}",
        fields in proptest::collection::hash_map(
            prop_oneof![Just("data"), Just("opts"), Just("atm"), Just("ats"), Just("timestamp"), Just("progress"),
                        Just("parent"), Just("parentKey"), Just("name"), Just("delay"), Just("stc"), Just("defa")],
            field(), 0..12),
    ) {
        let map: HashMap<String, String> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if let Ok(job) = bullmq::Job::from_redis_hash(&id, &map) {
            let w = to_wit_job(&job, "q");
            prop_assert_eq!(&w.id, &id);
            for json in [&w.data, &w.opts, &w.progress] {
                prop_assert!(serde_json::from_str::<serde_json::Value>(json).is_ok(), "invalid JSON for the guest: {}", json);
            }
            let _ = Backoff::from_opts(&serde_json::from_str::<serde_json::Value>(&w.opts).unwrap());
        }
    }

    /// bullmq-official patch 6: a job read straight from HGETALL's flat
    /// reply is the job `from_redis_hash` makes of the same hash (values as
    /// lossy UTF-8, unknown fields ignored, non-bulk pairs skipped, the last
    /// of a repeated field wins).
    #[test]
    fn job_from_flat_hgetall_is_job_from_hash(
        id in "[a-zA-Z0-9:_-]{1,40}",
        pairs in proptest::collection::vec((
            prop_oneof![Just(b"data".to_vec()), Just(b"opts".to_vec()), Just(b"atm".to_vec()), Just(b"ats".to_vec()),
                        Just(b"timestamp".to_vec()), Just(b"progress".to_vec()), Just(b"parent".to_vec()),
                        Just(b"parentKey".to_vec()), Just(b"name".to_vec()), Just(b"delay".to_vec()), Just(b"stc".to_vec()),
                        Just(b"defa".to_vec()), Just(b"rjk".to_vec()), Just(b"pb".to_vec()), Just(b"returnvalue".to_vec()),
                        Just(b"failedReason".to_vec()), Just(b"processedOn".to_vec()), Just(b"other".to_vec()),
                        proptest::collection::vec(any::<u8>(), 0..6)],
            prop_oneof![field().prop_map(String::into_bytes), proptest::collection::vec(any::<u8>(), 0..12)],
            any::<bool>()), 0..14),
    ) {
        let mut flat = Vec::new();
        let mut map = HashMap::new();
        for (k, v, bulk) in pairs {
            if bulk {
                map.insert(String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned());
                flat.push(redis::Value::BulkString(k));
                flat.push(redis::Value::BulkString(v));
            } else {
                flat.push(redis::Value::BulkString(k));
                flat.push(redis::Value::Int(v.len() as i64));
            }
        }
        let flat_job = bullmq::Job::from_hgetall(&id, &flat);
        prop_assert_eq!(flat_job.is_none(), map.is_empty());
        if let Some(job) = flat_job {
            let a = job.map(|j| serde_json::to_value(&j).unwrap()).map_err(|e| e.to_string());
            let b = bullmq::Job::from_redis_hash(&id, &map).map(|j| serde_json::to_value(&j).unwrap()).map_err(|e| e.to_string());
            prop_assert_eq!(a, b);
        }
    }

    /// The host's argument check accepts exactly the JSON texts within the
    /// limit, and refuses the rest as `invalid` (never a panic, never a trap).
    #[test]
    fn host_json_argument_check(s in any::<String>(), max in 0usize..64) {
        let valid = serde_json::from_str::<serde_json::Value>(&s).is_ok();
        match check_json_arg("data", &s, max) {
            Ok(()) => prop_assert!(valid && s.len() <= max),
            Err(JobError::Invalid(msg)) => {
                prop_assert!(!valid || s.len() > max);
                prop_assert!(msg.starts_with("data is"));
            }
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    /// Log lines are cut on character boundaries, and captured output never
    /// exceeds its cap, however the guest writes it.
    #[test]
    fn captured_output_is_bounded(chunks in proptest::collection::vec(any::<String>(), 0..20), cap in 0usize..300, max_line in 1usize..50) {
        let out = CapturedOutput::new(cap);
        let mut stream = out.clone();
        for c in &chunks {
            wasmtime_wasi::p2::OutputStream::write(&mut stream, bytes::Bytes::from(c.clone().into_bytes())).unwrap();
        }
        let lines = out.take_lines(max_line);
        let body: usize = lines.iter().filter(|l| !l.starts_with("[bullpen]")).map(|l| l.len()).sum();
        prop_assert!(body <= cap);
        for l in lines.iter().filter(|l| !l.starts_with("[bullpen]")) {
            prop_assert!(l.len() <= max_line);
        }
    }

    #[test]
    fn truncate_utf8_keeps_char_boundaries(s in any::<String>(), max in 0usize..100) {
        let t = truncate_utf8(&s, max);
        prop_assert!(t.len() <= max);
        prop_assert!(s.starts_with(t));
    }

    /// Backoff with jitter stays in BullMQ's range [max·(1−j), max].
    #[test]
    fn jitter_stays_in_range(delay in 0u64..100_000, n in 1u32..10, j in 0.0f64..=1.0, r in 0.0f64..1.0) {
        let b = Backoff { kind: "exponential".into(), delay, jitter: j };
        let max = (2f64.powi(n as i32 - 1) * delay as f64).round();
        let d = b.builtin_delay(n, r) as f64;
        prop_assert!(d <= max && d >= (max * (1.0 - j)).floor() - 1.0);
    }
}
