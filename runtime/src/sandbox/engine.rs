//! The one wasmtime `Engine` of a bullpen process, and the epoch ticker that
//! gives guests a heartbeat.

use std::thread;
use std::time::Duration;

use wasmtime::{Config, Engine};

/// How often the epoch advances. Every tick a running guest yields to tokio
/// (so a spinning guest cannot starve lock renewal or other attempts), and
/// the attempt's wall-clock limit is checked. 10 ms bounds a limit's overshoot
/// while costing ~100 wakeups/s.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine-wide settings a process picks at start.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EngineOptions {
    /// Count fuel (instructions, roughly) so `--fuel` can cap an attempt.
    /// Off by default: metering costs every guest some speed, and the
    /// wall-clock limit already stops runaway guests.
    pub(crate) fuel: bool,
}

/// Build the engine every plugin is compiled for, with default options.
pub(crate) fn new_engine() -> anyhow::Result<Engine> {
    new_engine_with(EngineOptions::default())
}

/// Build the engine every plugin is compiled for.
pub(crate) fn new_engine_with(options: EngineOptions) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.consume_fuel(options.fuel);
    // A fresh instance per attempt: the pooling allocator reuses linear
    // memories, tables and fiber stacks instead of mmapping and unmapping
    // them per attempt. Measured (perf, echo at concurrency 100): with the
    // on-demand allocator most worker CPU went to munmap TLB shootdowns and
    // page-table locks. Limits are per process and generous; the per-binding
    // memory cap is the ResourceLimiter's. `BULLPEN_ALLOCATOR=on-demand`
    // turns it off.
    if std::env::var("BULLPEN_ALLOCATOR").map(|v| v != "on-demand").unwrap_or(true) {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(2_000)
            .total_core_instances(20_000)
            .total_memories(4_000)
            .total_tables(20_000)
            .total_stacks(2_000)
            .table_elements(100_000)
            .max_core_instance_size(4 << 20)
            .max_component_instance_size(4 << 20);
        // Reset a used slot by zeroing only the pages the attempt dirtied,
        // keeping them resident (Linux >= 6.7 PAGEMAP_SCAN; elsewhere
        // `Auto` falls back to madvise). Without it every attempt unmapped
        // and refaulted its pages: perf showed page faults and TLB-shootdown
        // IPIs on top, and the attempt-overhead bench halved with it (Rust
        // echo p50 63 -> 31 µs; Go 1.4 -> 0.6 ms; JS 1.8 -> 1.1 ms). 4 MiB per
        // slot bounds what stays resident: a slot keeps at most its dirty
        // pages below that size (echo dirties ~200 KiB).
        pool.pagemap_scan(wasmtime::Enabled::Auto).linear_memory_keep_resident(4 << 20).table_keep_resident(1 << 20);
        // Knobs for measuring other settings (bench/README.md), not for users.
        let knob = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok());
        if let Some(n) = knob("BULLPEN_POOL_KEEP_RESIDENT") {
            pool.linear_memory_keep_resident(n).table_keep_resident(n);
        }
        if let Some(n) = knob("BULLPEN_POOL_DECOMMIT_BATCH") {
            pool.decommit_batch_size(n);
        }
        if std::env::var("BULLPEN_PAGEMAP_SCAN").as_deref() == Ok("no") {
            pool.pagemap_scan(wasmtime::Enabled::No);
        }
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    // Tables stay lazily initialised (wasmtime's default): a fresh instance
    // fills only the function references its calls reach. The knob is for
    // measuring (bench/README.md: eager made Go's fresh attempt 91 -> 274 µs).
    if std::env::var("BULLPEN_TABLE_LAZY_INIT").as_deref() == Ok("no") {
        config.table_lazy_init(false);
    }
    // Epoch interruption, not fuel, for time limits: near-zero cost per
    // instruction, and a guest in a tight loop is still interrupted.
    config.epoch_interruption(true);
    // Guests run on fiber stacks; 1 MiB of wasm stack gives deep but
    // bounded recursion, reported as a stack-overflow trap.
    config.max_wasm_stack(1 << 20);
    config.async_stack_size(2 << 20);
    // Cranelift with full optimisation: compile once per digest, run often.
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    let engine = Engine::new(&config)?;
    start_epoch_ticker(&engine);
    Ok(engine)
}

/// A background thread that increments the engine's epoch every
/// [`EPOCH_TICK`]. It holds only a weak reference, so it ends with the engine.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    thread::Builder::new()
        .name("bullpen-epoch".into())
        .spawn(move || loop {
            thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .expect("spawn epoch ticker thread");
}

#[cfg(test)]
mod tests {
    use wasmtime::{Instance, Module, Store};

    /// A guest that writes one byte on every other host page of 1.6 MiB:
    /// 200 dirty pages, none adjacent, so 200 separate regions for the
    /// slot reset's page scan.
    const DIRTY_200_REGIONS: &str = r#"(module
        (memory (export "memory") 32)
        (func (export "dirty")
          (local $i i32)
          (loop $next
            (i32.store8 (i32.mul (local.get $i) (i32.const 8192)) (i32.const 1))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $next (i32.lt_u (local.get $i) (i32.const 200))))))"#;

    /// Minor page faults of this thread so far (/proc/thread-self/stat field 10).
    fn minor_faults() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name (field 2) is in parentheses and may hold spaces.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(7).unwrap().parse().unwrap()
    }

    /// Linux >= 6.7 has PAGEMAP_SCAN, which the pooling allocator's reset
    /// needs to keep dirty pages resident; older kernels decommit them.
    fn kernel_has_pagemap_scan() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut v = release.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse::<u32>().ok());
        (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 7)
    }

    /// The slot a fresh instance gets back was reset with every page the
    /// previous one dirtied kept resident, however scattered: the next
    /// instance writes them without page faults. Upstream wasmtime 48 stops
    /// the scan after 32 regions and decommits the rest (vendor/wasmtime
    /// patch 0002): then the second run below faults ~168 times.
    #[test]
    fn a_reset_slot_keeps_scattered_dirty_pages_resident() {
        let engine = super::new_engine().unwrap();
        let module = Module::new(&engine, DIRTY_200_REGIONS).unwrap();
        let run = || {
            let mut store = Store::new(&engine, ());
            store.set_epoch_deadline(u64::MAX / 2);
            let instance = Instance::new(&mut store, &module, &[]).unwrap();
            let dirty = instance.get_typed_func::<(), ()>(&mut store, "dirty").unwrap();
            let before = minor_faults();
            dirty.call(&mut store, ()).unwrap();
            minor_faults() - before
        };
        let first = run();
        assert!(first >= 200, "the first instance faults its 200 pages in ({first} faults)");
        let second = run();
        if kernel_has_pagemap_scan() {
            assert!(second < 20, "the second instance refaulted {second} of its 200 pages: the reset decommitted them");
        } else {
            eprintln!("kernel without PAGEMAP_SCAN: resets decommit dirty pages ({second} faults), nothing to check");
        }
    }
}
