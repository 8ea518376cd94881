//! bullpen: a BullMQ (v6) worker runtime whose job processors are sandboxed
//! WebAssembly components.
//!
//! The layers, bottom up (a module imports only from layers below it;
//! ARCHITECTURE.md has the whole map and the invariants):
//! - [`error`], `conn` (where Redis is), `metrics`, `span` (the attempt's log
//!   span): leaves every layer may use.
//! - `sandbox`: the wasmtime `Engine`, per-attempt limits, captured output,
//!   the deny-by-default WASI context. Knows nothing of jobs.
//! - `host`: the WIT `job-context` functions and the store data they run
//!   on (`HostState`), over a job in Redis (lock-token-checked) or in memory.
//! - `plugins`: a component loaded and validated; the registry of versions
//!   per queue; hot swap.
//! - `attempt`: the execution core (store, instance, call, limits) and the
//!   typed verdict of one attempt. Used alike by the worker, `bullpen run`
//!   and the benchmark.
//! - `queue`: BullMQ's side: a binding of a queue to a plugin slot, the
//!   trigger that turns a verdict into BullMQ's transition, the shards.
//! - `process`: `bullpen worker`'s composition root.
//! - `ops`: operator commands over Redis (inspect, retry, stats, bulk add).
//! - [`cli`]: the command line, `bullpen.toml`, `bullpen run`.
//!
//! The contract with guests is `wit/processor.wit`; `bindings` is generated from it.

mod attempt;
pub mod cli;
mod conn;
pub mod error;
mod host;
mod json;
mod metrics;
mod ops;
mod plugins;
mod process;
mod queue;
mod sandbox;
mod span;
mod telemetry;

#[cfg(test)]
mod architecture_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod redis_codec_tests;

/// Where Redis is, for [`admin`]'s calls.
pub use conn::RedisTarget;
/// Operator actions for Rust callers: inspect and retry jobs.
pub use ops::admin;

/// What the `attempt-overhead` benchmark drives (not a stable API).
#[doc(hidden)]
pub mod bench {
    pub use crate::cli::run::{BenchAttempt, BenchWarm};
}

/// Host-side bindings generated from `wit/processor.wit`.
mod bindings {
    wasmtime::component::bindgen!({
        world: "processor",
        path: "../wit",
        // Host calls await Redis; exports are awaited so a guest yields to
        // tokio at every epoch tick instead of blocking a runtime thread.
        imports: { default: async },
        exports: { default: async },
        // The world's wasi imports are wasmtime's own implementations
        // (linked in `plugins::new_linker`); only wasi:config/store, whose
        // bindings wasmtime-wasi-config keeps private, is generated here
        // (and unused: its implementation is wasmtime-wasi-config's).
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });

    pub use bullpen::processor::types;

    impl<T: Send + 'static> ProcessorPre<T> {
        /// `instantiate_async` without re-checking the type of `process`
        /// for every instance: `ProcessorPre::new` checked it against the
        /// component once, and every instance of that component has it.
        /// The repeated check (a walk of the `job` record and the result
        /// variants) was ~2% of a busy worker's CPU in perf.
        pub async fn instantiate_checked_once(
            &self,
            mut store: impl wasmtime::AsContextMut<Data = T>,
        ) -> wasmtime::Result<Processor> {
            let mut store = store.as_context_mut();
            let instance = self.instance_pre.instantiate_async(&mut store).await?;
            let process = instance
                .get_func(&mut store, self.indices.process)
                .ok_or_else(|| wasmtime::format_err!("no export `process` found"))?;
            Ok(Processor { process })
        }
    }
}

/// Milliseconds since the Unix epoch: BullMQ's timestamps.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
