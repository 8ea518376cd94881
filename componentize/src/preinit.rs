//! Pre-initialisation of a Go `wasip1` reactor (issue 27): run its
//! `_initialize` (the Go runtime's start and every package's `init`, the
//! SDK's and the processor's `ExportProcessor` included) once, at build time,
//! and write the module back with its memory and globals as they were
//! afterwards (`wasmtime-wizer`, the host's wasmtime line). `_initialize` is
//! no longer exported, so a fresh instance per job starts with the runtime
//! already up instead of paying its start (~97% of a Go attempt before).
//!
//! What the snapshot freezes is chosen so that it is the same as what a job
//! would have seen, or harmless, and the build is reproducible:
//! - WASI during `_initialize` grants what the host grants a job (no env, no
//!   args, no preopens, stdout/stderr as non-terminal pipes): the runtime's
//!   environment, arguments and preopens read at start are a job's.
//! - The monotonic clock starts at 0 and advances 1 ns per read: every clock
//!   base the runtime records (the `time` package's `startNano`, the
//!   scheduler's and collector's stamps) is below what a fresh instance's
//!   clock reads (the host's starts at 0 per instance and counts real time).
//!   The wall clock is read anew by every `time.Now()`; it is fixed here.
//! - Randomness is a fixed seed: the runtime's generator (math/rand,
//!   math/rand/v2, map seeds made later) is reseeded by the Go SDK on the
//!   first export call of each instance (guest-sdk/go/reseed_wasip1.go);
//!   crypto/rand asks the host each time.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Result};
use rand::SeedableRng;
use wasmtime::{Config, Engine, Instance, Linker, Module, Store, Val};
use wasmtime_wasi::clocks::{HostMonotonicClock, HostWallClock};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType};

/// 1 ns per read, from 0: deterministic and below any fresh instance's clock.
struct StepClock(AtomicU64);

impl HostMonotonicClock for StepClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// 2000-01-01T00:00:00Z: nothing in the snapshot should depend on it.
struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_secs(946_684_800)
    }
}

/// What `_initialize` printed, kept to show it when it fails.
const OUTPUT_CAP: usize = 64 << 10;

/// The module with its `_initialize` already run. `module` must be a
/// reactor exporting `_initialize` (checked before).
pub fn preinitialize(module: &[u8]) -> Result<Vec<u8>> {
    // `_initialize` runs once: compiling it fast beats compiling it well.
    let mut config = Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::None);
    let engine = Engine::new(&config)?;
    let out = MemoryOutputPipe::new(OUTPUT_CAP);
    let wasi = WasiCtxBuilder::new()
        .stdout(out.clone())
        .stderr(out.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .monotonic_clock(StepClock(AtomicU64::new(0)))
        .wall_clock(FixedWallClock)
        .secure_random(rand::rngs::StdRng::seed_from_u64(0x6275_6c6c_7065_6e00))
        .insecure_random(rand::rngs::StdRng::seed_from_u64(0x6275_6c6c_7065_6e01))
        .insecure_random_seed(0x6275_6c6c_7065_6e02)
        .build_p1();
    let mut store = Store::new(&engine, wasi);
    // wasmtime-wizer's own `run` needs its `wasmtime` feature, which turns on
    // wasmtime features the host does not use (a second wasmtime build); its
    // two halves around our own instantiation need none.
    let wizer = {
        let mut w = wasmtime_wizer::Wizer::new();
        w.init_func("_initialize");
        w
    };
    let (cx, instrumented) = wizer.instrument(module)?;
    let run = async {
        let module = Module::new(&engine, &instrumented)?;
        let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |cx| cx)?;
        // The adapter's own export (guest-sdk/go abi_wasip1.go), called only
        // around cabi_realloc, never during initialisation.
        linker.func_wrap("wasi_snapshot_preview1", "adapter_monotonic_clock_set_paused", |_: i32| {})?;
        // The world's imports (job-context calls): an `init` has no job.
        linker.define_unknown_imports_as_traps(&module)?;
        let instance = linker.instantiate_async(&mut store, &module).await?;
        instance.get_typed_func::<(), ()>(&mut store, "_initialize")?.call_async(&mut store, ()).await?;
        let snapshot = wizer.snapshot(&cx, &mut Snapshot { store: &mut store, instance }).await?;
        drop_empty_passive_segments(&snapshot)
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let printed = || String::from_utf8_lossy(&out.contents()).into_owned();
    let snapshot = runtime.block_on(run).map_err(|e| {
        let printed = printed();
        let printed = if printed.trim().is_empty() { String::new() } else { format!("\nit printed:\n{printed}") };
        anyhow!(
            "{e:?}\nthe module's initialisation (the Go runtime's start and the packages' init functions) failed at build \
             time{printed}\n(an init that needs a job, the host's imports or real time cannot be pre-initialised: \
             move that work into the processor, or build with --no-preinit)"
        )
    })?;
    // At run time this would have gone to every job's log; say it once here.
    let printed = printed();
    if !printed.trim().is_empty() {
        eprintln!("bullpen-componentize: the module's initialisation printed (at build time):\n{printed}");
    }
    Ok(snapshot)
}

/// What wasmtime-wizer reads from the initialised instance: its globals and
/// memories, exported by name by `instrument`.
struct Snapshot<'a> {
    store: &'a mut Store<WasiP1Ctx>,
    instance: Instance,
}

impl InstanceState for Snapshot<'_> {
    async fn global_get(&mut self, name: &str, _: ValType) -> SnapshotVal {
        let global = self.instance.get_global(&mut *self.store, name).expect("instrumented global");
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("a global of type {:?} cannot be snapshotted", other.ty(&*self.store)),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self.instance.get_memory(&mut *self.store, name).expect("instrumented memory");
        contents(memory.data(&*self.store))
    }
}

/// wasmtime-wizer keeps every original active data segment as an empty
/// passive one (for `memory.init`/`data.drop` indices) and adds the
/// snapshot's; Go emits up to 100,000 segments (webhook-go: 100,000 + 10,000,
/// over the format's limit). A module that never names a segment (no
/// `memory.init` or `data.drop`: Go's) does not need the empty ones.
fn drop_empty_passive_segments(module: &[u8]) -> Result<Vec<u8>> {
    use wasmparser::{DataKind, Operator, Parser, Payload};
    let mut segments = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        match payload? {
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader()?;
                while !ops.eof() {
                    if matches!(ops.read()?, Operator::MemoryInit { .. } | Operator::DataDrop { .. }) {
                        return Ok(module.to_vec());
                    }
                }
            }
            Payload::DataSection(reader) => {
                for d in reader {
                    let d = d?;
                    match d.kind {
                        DataKind::Passive if d.data.is_empty() => {}
                        DataKind::Passive => segments.push((None, d.data)),
                        DataKind::Active { memory_index, offset_expr } => {
                            let mut r = offset_expr.get_binary_reader();
                            // The expression without its `end` (ConstExpr::raw adds it).
                            let expr = r.read_bytes(r.bytes_remaining() - 1)?;
                            segments.push((Some((memory_index, expr)), d.data));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload?;
        match &payload {
            Payload::DataSection(_) => {
                let mut data = wasm_encoder::DataSection::new();
                for (active, bytes) in &segments {
                    match active {
                        Some((memory, expr)) => data.active(
                            *memory,
                            &wasm_encoder::ConstExpr::raw(expr.iter().copied()),
                            bytes.iter().copied(),
                        ),
                        None => data.passive(bytes.iter().copied()),
                    };
                }
                out.section(&data);
            }
            Payload::DataCountSection { .. } => {
                out.section(&wasm_encoder::DataCountSection { count: u32::try_from(segments.len())? });
            }
            _ => {
                if let Some((id, range)) = payload.as_section() {
                    out.section(&wasm_encoder::RawSection { id, data: &module[range] });
                }
            }
        }
    }
    Ok(out.finish())
}
