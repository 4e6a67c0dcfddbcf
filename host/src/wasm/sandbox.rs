//! The sandbox every guest runs in: the wasmtime engine's configuration
//! (memory slots of one mapping, epoch interruption, no WASI but for the policy
//! modules built with it, which get nothing behind it), a memory cap per store
//! and a deadline per call.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};

use super::WasmContext;
use super::guarded_memory::GuardedMemories;
use super::memory_slots::MemorySlots;

/// Memory a guest instance may grow to. 100,000 CHILD SAs in one ESP
/// instance pair need more than 32 MiB in each (`cargo xtask bench-sas`),
/// and with 64 MiB the inbound instance held 100,000 but not 105,000, and
/// at that edge `sa-states` (a list of every SA, for the metrics) ran out
/// and trapped. Slots reserve this much address space, not memory.
pub(crate) const GUEST_MEMORY_LIMIT: usize = 128 << 20;
/// Epoch ticks a single call may run (one tick per [`EPOCH_TICK`]): an
/// IKE call (key derivations go to the host, but MODP is slow).
pub(crate) const CALL_DEADLINE_TICKS: u64 = 50;
/// The same for one ESP batch call, which takes microseconds: a guest that
/// does not return holds its thread (and the other groups on it) for at
/// most about 100 ms before it is replaced.
pub(crate) const ESP_CALL_DEADLINE_TICKS: u64 = 10;
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Tenants the guest pools are sized for (the edge PoP's scale, #13; the
/// config takes [`crate::config::tenant::MAX_TENANTS`] for now, bounded by
/// the data path's per-tenant TUN devices, not by the pools).
pub const POOL_TENANTS: u32 = 10_000;

/// Instances the ESP guests may hold at once: two per routing domain (the
/// daemon's and each tenant's), and replacements being built. Each has one linear memory in a slot of
/// [`MemorySlots`]; slots cost address space, not memory, until used.
pub(crate) const GUEST_SLOTS: u32 = 2 * POOL_TENANTS + 1024;

/// Elements a table of an ESP or IKE guest may hold (the IKE module's
/// function table has under a hundred); a guest with a larger one fails to
/// instantiate, naming both numbers.
pub(crate) const GUEST_TABLE_ELEMENTS: usize = 1_024;

/// The engine of the ESP guests. Each instance's memory is a
/// slot of one mapping ([`MemorySlots`]: no `mprotect`, no new mapping per
/// instance), and the compiled code checks every access against the
/// memory's length: no guard region, so 21,000 slots of 128 MiB take
/// 2.8 TB of address space and no memory. Tables and instance records are
/// allocated with the store. Memory is initialised by copying the module's
/// data (under a KiB for our guests), not by mapping its image.
pub(crate) fn engine() -> Result<(Engine, Arc<MemorySlots>)> {
    small_guest_engine(GUEST_MEMORY_LIMIT, GUEST_SLOTS, "wasmtime")
}

/// What every engine starts from: wasmtime's defaults, and with
/// `WASMSEC_PERF_MAP=1` a perf map (`/tmp/perf-PID.map`) naming the
/// guests' compiled functions, so `perf` profiles show guest code by name
/// (function names need a component built unstripped:
/// `CARGO_PROFILE_GUEST_STRIP=false cargo xtask build`).
fn base_config() -> Config {
    let mut config = Config::new();
    if std::env::var_os("WASMSEC_PERF_MAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

/// The engine of the guests a process holds only a few of: the IKE guest
/// (one instance) and the daemon's own domain's ESP pairs (one per ESP
/// component). Their memories take wasmtime's default reservation (4 GiB
/// and a guard region, address space only), so the compiled code checks
/// no bounds. For the IKE guest, whose own code is most of its cost,
/// explicit checks made a handshake cost the responder about 4 % more CPU
/// (four runs); for the ESP guest they cost 5-6 points of raw AEAD speed
/// in `cargo xtask bench` (2026-12-01). Stores' limiters cap the memory
/// at [`GUEST_MEMORY_LIMIT`] as for the others; thousands of tenants'
/// instances would not fit 4 GiB each in the address space, so theirs
/// stay in slots ([`engine`]). The host makes these memories itself, in
/// the same layout ([`GuardedMemories`]), to learn where an ESP
/// instance's memory lies (its SAs' state hints).
pub(crate) fn guarded_engine() -> Result<Engine> {
    let mut config = base_config();
    config
        .with_host_memory(Arc::new(GuardedMemories))
        // Memory is initialised by copying the module's data, as in the
        // slots: a host-made memory is not mapped from its image.
        .memory_init_cow(false)
        .epoch_interruption(true)
        .wasm_component_model(true);
    Engine::new(&config).context("configuring wasmtime for the guests with guarded memories")
}

/// An engine whose instances' memories are slots of `slot` bytes, `count`
/// of them, and the slots (to count those in use).
fn small_guest_engine(slot: usize, count: u32, what: &str) -> Result<(Engine, Arc<MemorySlots>)> {
    let slots = Arc::new(MemorySlots::new(slot, count)?);
    let mut config = base_config();
    config
        .allocation_strategy(InstanceAllocationStrategy::OnDemand)
        .with_host_memory(slots.clone())
        .memory_reservation(slot as u64)
        .memory_guard_size(0)
        .guard_before_linear_memory(false)
        .memory_reservation_for_growth(0)
        .memory_init_cow(false)
        .epoch_interruption(true)
        .wasm_component_model(true);
    Ok((Engine::new(&config).context(format!("configuring {what}"))?, slots))
}

/// Memory a policy module's instance may grow to: decisions are table
/// lookups, and many tenants each have one.
pub(crate) const POLICY_MEMORY_LIMIT: usize = 4 << 20;
/// Elements a policy module's table may hold: ample for modules compiled
/// from Rust, C or Go (the allow-list has a dozen); a module with a larger
/// table is refused when it is loaded, naming both numbers. See
/// [`GUEST_TABLE_ELEMENTS`] for why the slots are kept small.
pub(crate) const POLICY_TABLE_ELEMENTS: usize = 4_096;
/// Policy instances one process can hold (tenants, plus those being
/// checked during reloads).
pub(crate) const POLICY_SLOTS: u32 = POOL_TENANTS + 2_000;

/// The engine policy modules run in: memory slots of the policy limit, as
/// for the ESP and IKE guests ([`engine`]), 12,000 of them in about 50 GB
/// of address space. Linear memory is initialised by copying the module's
/// few KiB of data, not by mapping its image copy-on-write: for modules
/// this small the mapping costs more than the copy.
pub(crate) fn policy_engine() -> Result<(Engine, Arc<MemorySlots>)> {
    small_guest_engine(POLICY_MEMORY_LIMIT, POLICY_SLOTS, "wasmtime for policy modules")
}

/// Memory a policy module built with WASI imports may grow to: such a
/// module embeds a language runtime (CPython, for componentize-py).
pub(crate) const RUNTIME_POLICY_MEMORY_LIMIT: usize = 256 << 20;

/// The engine for policy modules that embed a language runtime and
/// import WASI (which they get with nothing granted, see
/// `crate::wasm::policy`): instances of tens of MiB, a few per process, so
/// allocated on demand with their memory image mapped copy-on-write.
pub(crate) fn runtime_policy_engine() -> Result<Engine> {
    let mut config = base_config();
    config.epoch_interruption(true).wasm_component_model(true);
    Engine::new(&config).context("configuring wasmtime for policy modules with a runtime")
}

/// The engines policy modules run in: `small` for modules that import
/// nothing (the pool sized for thousands of tenants), `runtime` for those
/// built with WASI imports.
#[derive(Clone)]
pub struct PolicyEngines {
    pub small: Engine,
    pub runtime: Engine,
    /// `small`'s memory slots.
    pub(crate) small_slots: Arc<MemorySlots>,
}

impl PolicyEngines {
    pub(crate) fn new() -> Result<PolicyEngines> {
        let (small, small_slots) = policy_engine()?;
        Ok(PolicyEngines { small, runtime: runtime_policy_engine()?, small_slots })
    }
}

/// A policy store's limits.
pub(crate) fn policy_store_limits() -> GuestLimits {
    GuestLimits {
        limits: StoreLimitsBuilder::new().memory_size(POLICY_MEMORY_LIMIT).instances(4).build(),
        tables: POLICY_TABLE_ELEMENTS,
        peak: 0,
        initial: 0,
        size: 0,
    }
}

/// The limits of a policy module with a runtime (its runtime is made of
/// several core modules, each with its memory and tables).
pub(crate) fn runtime_policy_store_limits() -> GuestLimits {
    let limits =
        StoreLimitsBuilder::new().memory_size(RUNTIME_POLICY_MEMORY_LIMIT).instances(64).memories(64).tables(64);
    GuestLimits { limits: limits.build(), tables: usize::MAX, peak: 0, initial: 0, size: 0 }
}

/// A store's limits (memory and instances), and the most linear memory its
/// guest has held: what the status reports, so a test can show that a
/// flood does not make a guest grow.
#[derive(Debug)]
pub struct GuestLimits {
    /// What the store enforces.
    limits: StoreLimits,
    /// Elements a table may hold.
    tables: usize,
    /// The largest linear memory granted so far, in bytes (across
    /// instances, when a replacement takes over the store's data).
    peak: usize,
    /// The current instance's linear memory: its length when it was
    /// made, and now, in bytes.
    initial: usize,
    size: usize,
}

impl GuestLimits {
    /// The most linear memory the guest has held, in bytes.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// How much the current instance's linear memory grew past what it
    /// was made with, in bytes: a wasm memory never shrinks, so this
    /// stays taken until the instance goes.
    pub fn grown(&self) -> usize {
        self.size.saturating_sub(self.initial)
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let granted = self.limits.memory_growing(current, desired, maximum)?;
        if granted {
            // A memory is made as a growth from 0 to its initial size
            // (a replacement instance's too, which takes over this data).
            if current == 0 {
                self.initial = desired;
            }
            self.size = desired;
            self.peak = self.peak.max(desired);
        }
        Ok(granted)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.tables {
            // An error, not a refusal, so that the reason names both numbers.
            wasmtime::bail!("a table of {desired} elements is more than the {} a guest may hold", self.tables);
        }
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// A store's limits: memory and instances.
pub(crate) fn store_limits() -> GuestLimits {
    GuestLimits {
        limits: StoreLimitsBuilder::new().memory_size(GUEST_MEMORY_LIMIT).instances(4).build(),
        tables: GUEST_TABLE_ELEMENTS,
        peak: 0,
        initial: 0,
        size: 0,
    }
}

/// Link a component against the host's imports (`add` puts them in the
/// linker) and check it can be instantiated.
pub(crate) fn link<T: 'static>(
    engine: &Engine,
    component: &Component,
    what: &str,
    add: impl FnOnce(&mut Linker<T>) -> wasmtime::Result<()>,
) -> Result<InstancePre<T>> {
    let mut linker = Linker::<T>::new(engine);
    add(&mut linker).context("linking host imports")?;
    linker.instantiate_pre(component).context(format!("linking the {what} component"))
}

/// A guest's store data: it carries the [`store_limits`] its store enforces.
pub(crate) trait Limited: 'static {
    fn limits(&mut self) -> &mut GuestLimits;
}

/// A store for one guest instance: its memory cap, and a deadline for the
/// first call (every call sets its own again).
pub(crate) fn new_store<T: Limited>(engine: &Engine, data: T) -> Store<T> {
    let mut store = Store::new(engine, data);
    store.limiter(|s| s.limits());
    store.set_epoch_deadline(CALL_DEADLINE_TICKS);
    store
}

/// Advance the engines' epochs every [`EPOCH_TICK`] until the returned
/// flag is set, so that every call's deadline means something.
pub(crate) fn start_epoch_ticker(engines: &[&Engine]) -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let (e, s) = (engines.iter().map(|e| (*e).clone()).collect::<Vec<_>>(), stop.clone());
    std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
        while !s.load(Ordering::Relaxed) {
            std::thread::sleep(EPOCH_TICK);
            e.iter().for_each(Engine::increment_epoch);
        }
    })?;
    Ok(stop)
}
