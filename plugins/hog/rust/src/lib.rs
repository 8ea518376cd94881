//! hog: abuses the sandbox on purpose; `data.mode` picks the abuse.
//!
//! - `loop`: spins forever (stopped by the wall-clock limit)
//! - `memory`: grows memory without bound (stopped by the memory cap)
//! - `output`: writes ~8 MiB to stdout, then completes (the log keeps a bounded part)
//! - `recursion`: recurses without bound (a stack-overflow trap)
//! - `file` / `net` / `env`: tries to read a host file, open a socket, read the
//!   environment; completes with what it got (errors, not access)
//! - `biglog` / `bigprogress` / `bigdata`: a 100 KiB log line, a 100 KiB
//!   progress value, 17 MiB of data; completes with the host's answers
//! - `bigreturn`: returns 17 MiB (over the host's return-value limit)
//! - `slow`: three steps of log line + progress (10, 20, 30), each followed
//!   by 400 ms of waiting: sleeping (a WASI call) in steps 1 and 3, spinning
//!   in wasm in step 2; shows pending writes reaching Redis mid-attempt;
//!   with `"print": true` each step also prints `hog: printed step N`
//! - `count`: prints and returns how many jobs this instance has processed
//!   (always 1 with a fresh instance per attempt; counts up with
//!   `--instance-reuse`)
//! - `entropy`: returns what a fresh instance must draw anew: `crypto` and
//!   `math` (std has no generator of its own: the keys of two `RandomState`s,
//!   which std draws from the host's random source), `nowMs` (SystemTime)
//! - anything else: completes with `{"ok": true}`
use bullpen_guest::{Job, JobError, Outcome};
use serde_json::json;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

/// Jobs this instance has processed: state that outlives a job only when
/// the host reuses the instance.
static PROCESSED: AtomicU64 = AtomicU64::new(0);

#[derive(serde::Deserialize)]
struct Data {
    mode: String,
    #[serde(default)]
    print: bool,
}

#[allow(unconditional_recursion)]
fn recurse(n: u64, pad: [u64; 16]) -> u64 {
    black_box(pad);
    1 + recurse(black_box(n + 1), black_box([n; 16]))
}

fn process(job: &Job) -> Result<Outcome, JobError> {
    let processed = PROCESSED.fetch_add(1, Ordering::Relaxed) + 1;
    let data: Data = job.data()?;
    match data.mode.as_str() {
        "loop" => {
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                black_box(&hoard);
            }
        }
        "output" => {
            let line = "hog: flooding stdout ".repeat(4);
            for i in 0..100_000 {
                println!("{i} {line}");
            }
            Outcome::complete(&json!({ "printed": 100_000 }))
        }
        "recursion" => Outcome::complete(&json!({ "depth": recurse(0, [0; 16]) })),
        "file" => {
            let r = std::fs::read_to_string("/etc/passwd");
            Outcome::complete(&json!({ "file": r.map(|s| s.len().to_string()).map_err(|e| e.to_string()) }))
        }
        "net" => {
            let r = std::net::TcpStream::connect("127.0.0.1:6379");
            Outcome::complete(&json!({ "net": r.map(|_| "connected".to_string()).map_err(|e| e.to_string()) }))
        }
        "biglog" | "bigprogress" | "bigdata" => {
            let r = match data.mode.as_str() {
                "biglog" => job.log("x".repeat(100 << 10)),
                "bigprogress" => job.progress("x".repeat(100 << 10)),
                _ => job.update_data(&json!({ "blob": "x".repeat(17 << 20) })),
            };
            Outcome::complete(&json!({ "refused": r.err().map(|e| e.to_string()) }))
        }
        "bigreturn" => Outcome::complete(&json!({ "blob": "x".repeat(17 << 20) })),
        "slow" => {
            for step in 1..=3u32 {
                job.log(format!("hog: step {step}"))?;
                if data.print {
                    println!("hog: printed step {step}");
                }
                job.progress(step * 10)?;
                let wait = std::time::Duration::from_millis(400);
                if step == 2 {
                    let t = std::time::Instant::now();
                    while t.elapsed() < wait {
                        black_box(step);
                    }
                } else {
                    std::thread::sleep(wait);
                }
            }
            Outcome::complete(&json!({ "steps": 3 }))
        }
        "env" => Outcome::complete(&json!({ "env": std::env::vars().count(), "args": std::env::args().count() })),
        "count" => {
            println!("hog: job {processed} of this instance");
            Outcome::complete(&json!({ "processed": processed }))
        }
        "entropy" => {
            use std::hash::BuildHasher;
            let draw = || std::collections::hash_map::RandomState::new().hash_one(0u64);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Outcome::complete(&json!({
                "crypto": format!("{:016x}{:016x}", draw(), draw()),
                "math": draw().to_string(),
                "nowMs": now.as_millis() as u64,
            }))
        }
        _ => Outcome::complete(&json!({ "ok": true })),
    }
}

bullpen_guest::export_processor!(process);
