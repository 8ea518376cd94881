//! The execution core: a store with the attempt's limits, an instance (fresh
//! from the plugin's `InstancePre`, or one a previous attempt left with
//! `--instance-reuse`), and one call of `process` (or `backoff`) under the
//! wall-clock limit. Like Spin's `crates/core`: the one place that narrows
//! wasmtime to what bullpen needs, with each setting next to its reason.

use std::time::{Duration, Instant};

use wasmtime::{Engine, Store};

use crate::bindings::types::{self as wit, Failure, Outcome};
use crate::bindings::Processor;
use crate::host::{Backend, HostState};
use crate::plugins::Plugin;
use crate::sandbox::{CapturedOutput, Limits};

/// Why a guest call did not return a value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The component could not be instantiated for this attempt (its start
    /// code trapped, or the store could not be set up).
    #[error("cannot instantiate processor: {0:#}")]
    Instantiate(wasmtime::Error),
    /// The guest trapped (panic, unreachable, stack overflow, out of bounds,
    /// out of fuel, a refused memory grow); wasmtime's typed error.
    #[error("{0:#}")]
    Trap(wasmtime::Error),
    /// The call ran past the wall-clock limit and was dropped.
    #[error("timed out")]
    Timeout,
}

/// An instance whose `process` returned, with the store it lives in and the
/// output capture its WASI context writes to (`--instance-reuse`).
pub(crate) struct Kept {
    pub(crate) store: Store<HostState>,
    pub(crate) instance: Processor,
    pub(crate) out: CapturedOutput,
}

/// What an attempt runs in, before its call.
pub(crate) struct Prepared {
    pub(crate) store: Store<HostState>,
    /// A kept instance, or `None` for a fresh one made by [`call`].
    pub(crate) instance: Option<Processor>,
    pub(crate) out: CapturedOutput,
}

/// What [`call`] ended with.
pub(crate) struct Called {
    pub(crate) result: Result<Result<Outcome, Failure>, CallError>,
    /// The instance it ran in, if `process` returned (for reuse).
    pub(crate) instance: Option<Processor>,
    /// How long a fresh instance took to make (metrics).
    pub(crate) instantiated: Option<Duration>,
}

/// A store for one attempt of a plugin: the memory cap installed. Fuel and
/// the epoch deadline are set by each call.
fn new_store(engine: &Engine, state: HostState) -> Store<HostState> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.memory);
    store
}

/// What one attempt runs in: `kept`'s store (its job context replaced, its
/// output capture emptied, the memory cap's record cleared) and instance,
/// or a new store and no instance yet. `job` builds the attempt's job
/// context around its output capture.
pub(crate) fn prepare(
    engine: &Engine,
    limits: &Limits,
    kept: Option<Kept>,
    job: impl FnOnce(&CapturedOutput) -> Backend,
) -> Prepared {
    match kept {
        Some(Kept { mut store, instance, out }) => {
            let out = out.reset(limits.max_output_bytes);
            let state = store.data_mut();
            state.job = job(&out);
            state.memory.hit = None;
            state.variables = None;
            Prepared { store, instance: Some(instance), out }
        }
        None => {
            let out = CapturedOutput::new(limits.max_output_bytes);
            let state = HostState::new(job(&out), limits, &out);
            Prepared { store: new_store(engine, state), instance: None, out }
        }
    }
}

/// The HTTP deadline, fuel for this call (`--fuel`), and a yield to tokio at every epoch tick.
///
/// The yield goes through `tokio::task::yield_now`, which wakes the task
/// only after the runtime has polled its I/O driver. wasmtime's plain
/// `Yield` wakes it at once: on a worker with one thread a spinning guest
/// then held up Redis replies (its own write-behind flush, other attempts'
/// moves) for ~60 ticks, tokio's `event_interval`. The wall clock is not
/// enforced here but by the timeout around the call, which drops (and so
/// stops) the guest.
fn arm(store: &mut Store<HostState>, limits: &Limits) -> wasmtime::Result<()> {
    // Outbound HTTP waits are clipped to what is left of this call.
    store.data_mut().http.deadline = Instant::now() + limits.timeout;
    if let Some(fuel) = limits.fuel {
        store.set_fuel(fuel)?;
    }
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))));
    Ok(())
}

/// One `process` call under the attempt's limits (memory, fuel, wall clock)
/// in `instance`, or in a fresh instance of `plugin` when `None`. A worker's
/// attempt writes its pending log lines and progress while the guest runs
/// (`host::write_behind::drive`).
pub(crate) async fn call(
    store: &mut Store<HostState>,
    instance: Option<Processor>,
    plugin: &Plugin,
    limits: &Limits,
    job: &wit::Job,
) -> Called {
    let pending = match &store.data().job {
        Backend::Redis(ctx) => Some(ctx.pending.clone()),
        Backend::Local(_) => None,
    };
    if let Err(e) = arm(store, limits) {
        return Called { result: Err(CallError::Instantiate(e)), instance, instantiated: None };
    }
    let mut instantiated = None;
    // Boxed: this future is large (instantiation and call state), and
    // every wrapper around it would otherwise copy it.
    let called = tokio::time::timeout(
        limits.timeout,
        Box::pin(async {
            let instance = match instance {
                Some(i) => i,
                None => {
                    let t = Instant::now();
                    let i = plugin.pre.instantiate_checked_once(&mut *store).await.map_err(CallError::Instantiate)?;
                    instantiated = Some(t.elapsed());
                    i
                }
            };
            let r = crate::host::write_behind::drive(pending, instance.call_process(&mut *store, job)).await;
            r.map(|r| (r, instance)).map_err(CallError::Trap)
        }),
    )
    .await;
    match called {
        Ok(Ok((r, instance))) => Called { result: Ok(r), instance: Some(instance), instantiated },
        Ok(Err(e)) => Called { result: Err(e), instance: None, instantiated },
        Err(_) => Called { result: Err(CallError::Timeout), instance: None, instantiated },
    }
}

/// The guest's optional `backoff` export, in a fresh instance under the same
/// limits, with `state` as its store data (its host calls act on the job).
pub(crate) async fn call_backoff(
    engine: &Engine,
    plugin: &Plugin,
    state: HostState,
    limits: &Limits,
    args: (String, u32, String, wit::Job),
) -> Result<wit::BackoffDecision, CallError> {
    let mut store = new_store(engine, state);
    arm(&mut store, limits).map_err(CallError::Instantiate)?;
    let call = async {
        let instance = plugin.pre.instance_pre().instantiate_async(&mut store).await.map_err(CallError::Instantiate)?;
        let f = instance
            .get_typed_func::<(String, u32, String, wit::Job), (wit::BackoffDecision,)>(&mut store, "backoff")
            .map_err(CallError::Instantiate)?;
        let (d,) = f.call_async(&mut store, args).await.map_err(CallError::Trap)?;
        Ok(d)
    };
    tokio::time::timeout(limits.timeout, call).await.unwrap_or(Err(CallError::Timeout))
}
