//! `bullpen-bench-native <redis-url> <queue> <concurrency>`: processes jobs
//! with a closure doing what the echo plugin does (one log line, progress
//! 100, return the data) until SIGTERM. The no-Wasm ceiling for bench/run.py.
use bullmq::{Job, JobProgress, Worker, WorkerOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, queue, concurrency) = (args[1].clone(), args[2].clone(), args[3].parse().unwrap());
    let mut opts = WorkerOptions::default();
    opts.connection = opts.connection.url(url);
    opts.concurrency = concurrency;
    // As the host (runtime/src/worker.rs): per-job events nobody reads are off,
    // moveToFinished runs as a Redis Function.
    opts.job_events = false;
    opts.redis_functions = true;
    let worker = Worker::with_options(&queue, |mut job: Job, _| async move {
        job.log(&format!("echo: job {} ({})", job.id(), job.name())).await?;
        job.update_progress(JobProgress::Number(100.0)).await?;
        Ok(job.data().clone())
    }, opts)
    .await
    .unwrap();
    eprintln!("worker ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    term.recv().await;
    worker.close(5000).await.unwrap();
}
