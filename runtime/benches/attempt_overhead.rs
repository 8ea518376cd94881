//! `attempt-overhead`: one attempt's host cost without Redis, per guest
//! language: new Store (limits, WASI context, captured output) + instantiate
//! from the `InstancePre` + call `process` on a small job + drop, with the
//! echo plugin (one log line, progress 100, return the data), host calls
//! answered in memory (`bullpen run`'s job context, printing nothing).
//! `<lang>-reuse` runs the same attempt in the instance the previous one
//! used (`--instance-reuse`): only the call and the per-attempt resets.
//!
//!   cargo bench -p bullpen --bench attempt_overhead
//!
//! Criterion's estimates are printed as usual; each language's p50/p90/p99
//! over every timed iteration follow (criterion reports means and medians,
//! the issue asks for tails too). Plugins come from `target/plugins/`
//! (`bash scripts/build-plugins.sh`); a missing one is skipped, saying so.
//! `floor-<lang>` (bench/guests: completes with `null`, calls nothing) runs
//! too when `bash scripts/build-plugins.sh bench/guests target/bench-guests` built it.
//! `BULLPEN_BENCH_QUICK=1` runs a few iterations only;
//! `BULLPEN_BENCH_EXTRA=label=file.wasm,...` times more components (A/Bs). scripts/test.sh runs
//! it with `cargo test --benches` (criterion's test mode: each variant once),
//! so the benchmark cannot rot.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bullpen::bench::{BenchAttempt, BenchWarm};
use criterion::{criterion_group, criterion_main, Criterion};

// The `bullpen` binary's allocator (runtime/src/main.rs), so the numbers are
// the worker's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    format!("p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  (n = {})", p(0.50), p(0.90), p(0.99), v.len())
}

fn attempt_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut summary = Vec::new();
    let mut group = c.benchmark_group("attempt-overhead");
    if std::env::var_os("BULLPEN_BENCH_QUICK").is_some() {
        group.sample_size(10).warm_up_time(Duration::from_millis(100)).measurement_time(Duration::from_millis(300));
    }
    // `BULLPEN_BENCH_EXTRA=label=file.wasm,...`: more components to time the
    // same way (an A/B of two builds of one plugin, e.g. a guest SDK change).
    let extra = std::env::var("BULLPEN_BENCH_EXTRA").unwrap_or_default();
    let extra = extra.split(',').filter_map(|e| e.split_once('=')).map(|(l, f)| (l.to_string(), f.into()));
    let plugins = ["rust", "go", "js", "python"]
        .map(|lang| (lang.to_string(), root.join(format!("target/plugins/echo-{lang}.wasm"))));
    // `floor-<lang>`: a guest that completes with `null` and calls nothing
    // (bench/guests/README.md), when built into target/bench-guests.
    let floors = ["rust", "go", "js", "python"]
        .map(|lang| (format!("floor-{lang}"), root.join(format!("target/bench-guests/floor-{lang}.wasm"))))
        .into_iter()
        .filter(|(_, file)| file.exists());
    for (lang, file) in plugins.into_iter().chain(floors).chain(extra) {
        let file: std::path::PathBuf = file;
        if !file.exists() {
            eprintln!("attempt-overhead/{lang}: {} missing, skipped (scripts/build-plugins.sh)", file.display());
            continue;
        }
        let attempt = BenchAttempt::new(&file).unwrap();
        assert!(rt.block_on(attempt.once(&mut BenchWarm::fresh())), "echo-{lang} did not complete");
        // `<lang>-reuse` (`--instance-reuse`): the same attempt in the
        // instance the previous one left (no instantiation, no runtime
        // start, no slot reset).
        for (name, warm) in [(lang.to_string(), BenchWarm::fresh()), (format!("{lang}-reuse"), BenchWarm::reuse())] {
            // tokio's Mutex: its guard is held across the attempts' awaits.
            let (warm, times) = (tokio::sync::Mutex::new(warm), Mutex::new(Vec::new()));
            group.bench_function(&name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (attempt, times, warm) = (&attempt, &times, &warm);
                    async move {
                        let mut total = Duration::ZERO;
                        let mut warm = warm.lock().await;
                        for _ in 0..iters {
                            let t = Instant::now();
                            assert!(attempt.once(&mut warm).await);
                            let d = t.elapsed();
                            total += d;
                            times.lock().unwrap().push(d);
                        }
                        total
                    }
                })
            });
            let times = times.into_inner().unwrap();
            // Empty when a command-line filter left this variant out.
            if !times.is_empty() {
                summary.push((name, percentiles(times)));
            }
        }
    }
    group.finish();
    println!("\nattempt-overhead (new Store + instantiate + process + drop, no Redis):");
    for (lang, line) in summary {
        println!("  {lang:<11} {line}");
    }
}

criterion_group!(benches, attempt_overhead);
criterion_main!(benches);
