//! `bullpen-bench-native <redis-url> <queue> <concurrency>`: processes jobs
//! with a closure doing what the echo plugin does (one log line, progress
//! 100, return the data) until SIGTERM. The no-Wasm ceiling for bench/run.py.
//!
//! Threaded as the host is (runtime/src/shards.rs): one single-threaded
//! runtime per core (at most `concurrency`), each with a BullMQ worker and
//! its share of the concurrency, so "vs native" measures Wasm isolation,
//! not a different threading model.
use bullmq::{Job, JobProgress, Worker, WorkerOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, queue, concurrency): (String, String, usize) = (args[1].clone(), args[2].clone(), args[3].parse().unwrap());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = cores.clamp(1, concurrency.max(1));
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let threads: Vec<_> = (0..shards)
        .map(|i| {
            let share = concurrency / shards + usize::from(i < concurrency % shards);
            let (url, queue, mut stop, ready) = (url.clone(), queue.clone(), stop.subscribe(), ready_tx.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let mut opts = WorkerOptions::default();
                    opts.connection = opts.connection.url(url);
                    opts.concurrency = share;
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
                    ready.send(()).unwrap();
                    let _ = stop.recv().await;
                    worker.close(5000).await.unwrap();
                })
            })
        })
        .collect();
    for _ in 0..shards {
        ready_rx.recv().unwrap();
    }
    eprintln!("worker ready");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
    });
    let _ = stop.send(());
    for t in threads {
        t.join().unwrap();
    }
}
