//! Policy modules in wasmtime: loading (read, hash, compile or take the
//! artifact cached by content hash, link with nothing, instantiate,
//! self-test) and calls under a deadline. Every load step that fails
//! refuses the module with the reason; the decisions' meaning is
//! `crate::policy`'s.
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use super::PolicyEngines;
pub use super::bindings::policy::wasmsec::policy::types::{
    AuthMethod, AuthorizeRequest, Decision, Grant, IdKind, Identity, SaEvent, SaEventKind,
};
use super::bindings::policy::{Policy as Bindings, PolicyPre};
use super::sandbox::{self, GuestLimits, Limited};

/// Epoch ticks (10 ms each) one policy call may take: a decision is a
/// table lookup; a module that loops is cut off well inside the IKE
/// retransmission timer.
pub const POLICY_CALL_DEADLINE_TICKS: u64 = 5;

/// A policy instance's store data: its limits, and for a module built
/// with WASI imports a WASI context that grants nothing ([`no_wasi`]).
pub struct PolicyState {
    limits: GuestLimits,
    wasi: Option<Box<NoWasi>>,
}

/// What a module with WASI imports gets behind them.
pub struct NoWasi {
    ctx: wasmtime_wasi::WasiCtx,
    table: wasmtime_wasi::ResourceTable,
}

/// A WASI context with nothing granted: no preopened directory (every
/// path fails), no sockets (TCP, UDP and name lookup refused, no address
/// allowed), no environment, no arguments, empty stdin, stdout and stderr
/// discarded, and clocks frozen at zero: a decision may not depend on the
/// time or leak anything out. Only randomness is real (CPython seeds its
/// hashes with it; it reveals nothing).
fn no_wasi() -> NoWasi {
    let mut b = wasmtime_wasi::WasiCtxBuilder::new();
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock);
    NoWasi { ctx: b.build(), table: wasmtime_wasi::ResourceTable::new() }
}

/// The monotonic clock's interface as wasmtime-wasi links it (the version
/// of its WIT); `policy_python`'s sleeping module fails if it moves.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Waiting on the clock, behind wasmtime-wasi's own functions, sleeps for
/// real time inside the host call, where the call's deadline (an epoch
/// check in the guest's code) cannot reach it: a module that slept held
/// the IKE thread for as long as it asked. Its clock is frozen, so for it
/// no time passes while it waits: every subscription is ready at once.
fn no_waiting(linker: &mut Linker<PolicyState>) -> Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::{DynPollable, subscribe};
    fn at_once(mut store: wasmtime::StoreContextMut<'_, PolicyState>) -> wasmtime::Result<(Resource<DynPollable>,)> {
        let table = wasmtime_wasi::WasiView::ctx(store.data_mut()).table;
        let ready = table.push(AtOnce)?;
        Ok((subscribe(table, ready)?,))
    }
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |store, (_,): (u64,)| at_once(store))?;
    clock.func_wrap("subscribe-instant", |store, (_,): (u64,)| at_once(store))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A pollable that is ready when asked.
struct AtOnce;

impl wasmtime_wasi::p2::Pollable for AtOnce {
    // What `#[async_trait]` makes of `async fn ready(&mut self) {}`.
    fn ready<'a, 'b>(&'a mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async {})
    }
}

/// A clock that always says zero.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl wasmtime_wasi::WasiView for PolicyState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        // Stores of modules linked with WASI are made with a context
        // ([`Served::new_instance`]); the others have no WASI import to
        // get here through. A missing one is a host bug, not guest input.
        let w = self.wasi.get_or_insert_with(|| Box::new(no_wasi()));
        wasmtime_wasi::WasiCtxView { ctx: &mut w.ctx, table: &mut w.table }
    }
}

impl Limited for PolicyState {
    fn limits(&mut self) -> &mut GuestLimits {
        &mut self.limits
    }
}

/// A module that passed its checks and serves decisions.
pub struct Served {
    /// The file it came from, and the SHA-256 of its bytes (hex).
    pub file: PathBuf,
    pub hash: String,
    pre: PolicyPre<PolicyState>,
    engine: wasmtime::Engine,
    /// It imports WASI (it embeds a language runtime): it runs in the
    /// runtime engine with [`no_wasi`] behind its imports.
    pub with_wasi: bool,
    /// The live instance (None after a trap: instantiated again on the next call).
    instance: Mutex<Option<PolicyInstance>>,
    /// When its file change was noticed (for the swap-to-first-decision time).
    pub noticed: Instant,
    first_decided: AtomicBool,
}

/// One instance of a policy module in its own store (a tenant's; the
/// scale benchmark makes thousands).
pub struct PolicyInstance {
    store: Store<PolicyState>,
    bindings: Bindings,
}

impl PolicyInstance {
    /// The module's decision under the call deadline (an error: it
    /// trapped or ran out of time; the instance is then unusable).
    pub fn authorize(&mut self, request: &AuthorizeRequest) -> Result<Decision> {
        self.store.set_epoch_deadline(POLICY_CALL_DEADLINE_TICKS);
        Ok(self.bindings.wasmsec_policy_decide().call_authorize(&mut self.store, request)?)
    }

    /// The most linear memory it has held, in bytes.
    pub fn memory_peak(&mut self) -> usize {
        self.store.data_mut().limits.peak()
    }
}

impl Served {
    /// A fresh instance of the module in a store of its own.
    pub fn new_instance(&self) -> Result<PolicyInstance> {
        let state = match self.with_wasi {
            false => PolicyState { limits: sandbox::policy_store_limits(), wasi: None },
            true => PolicyState { limits: sandbox::runtime_policy_store_limits(), wasi: Some(Box::new(no_wasi())) },
        };
        let mut store = sandbox::new_store(&self.engine, state);
        store.set_epoch_deadline(POLICY_CALL_DEADLINE_TICKS);
        let bindings =
            self.pre.instantiate(&mut store).map_err(|e| anyhow::anyhow!("instantiating the policy module: {e}"))?;
        Ok(PolicyInstance { store, bindings })
    }

    /// Run `f` on the instance under the call deadline; a trap or timeout
    /// drops the instance (a trapped instance may not be entered again).
    fn call<T>(&self, f: impl FnOnce(&mut Store<PolicyState>, &Bindings) -> wasmtime::Result<T>) -> anyhow::Result<T> {
        let mut slot = self.instance.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(self.new_instance()?);
        }
        let Some(i) = slot.as_mut() else { unreachable!("set above") };
        i.store.set_epoch_deadline(POLICY_CALL_DEADLINE_TICKS);
        let r = crate::telemetry::guest_call(crate::telemetry::Guest::Policy, || f(&mut i.store, &i.bindings));
        if r.is_err() {
            *slot = None;
        }
        Ok(r?)
    }

    /// The module's decision (an error: it trapped or ran out of time).
    pub fn authorize(&self, request: &AuthorizeRequest) -> Result<Decision> {
        self.call(|s, b| b.wasmsec_policy_decide().call_authorize(s, request))
    }

    pub fn event(&self, e: &SaEvent) -> Result<()> {
        self.call(|s, b| b.wasmsec_policy_decide().call_on_event(s, e))
    }

    /// True the first time: this call is the module's first decision.
    pub fn first_decision(&self) -> bool {
        !self.first_decided.swap(true, Ordering::Relaxed)
    }
}

/// A policy engine of its own with its epoch ticker running (for
/// `wasmsec check-config`: the daemon's comes with its `Runtime`); the
/// ticker stops when the flag is set.
pub fn standalone_engines() -> Result<(PolicyEngines, std::sync::Arc<std::sync::atomic::AtomicBool>)> {
    let engines = PolicyEngines::new()?;
    let stop = sandbox::start_epoch_ticker(&[&engines.small, &engines.runtime])?;
    Ok((engines, stop))
}

/// How the module came to be compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Compiled now (and cached).
    Compiled,
    /// Loaded from the artifact cached under its content hash.
    Cached,
}

/// Largest policy module accepted (a Python module embeds its interpreter).
const MAX_MODULE_BYTES: u64 = 64 << 20;

/// SHA-256 of `bytes`, lower-case hex: what names a module and its artifact.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The compiled component for `bytes`, from `cache` if it holds the
/// artifact for this hash (and this wasmtime), else compiled and stored.
fn compile(engine: &Engine, bytes: &[u8], hash: &str, cache: Option<&Path>) -> Result<(Component, Source)> {
    let artifact = cache.map(|d| d.join(format!("{hash}.cwasm")));
    if let Some(a) = artifact.as_deref().filter(|a| a.is_file()) {
        // SAFETY: the cache directory is the daemon's own (created 0700)
        // and an artifact is written there only by `compile` below, from
        // bytes whose hash names it. wasmtime also checks that the
        // artifact was made by this version with these settings.
        #[allow(unsafe_code)]
        match unsafe { Component::deserialize_file(engine, a) } {
            Ok(c) => return Ok((c, Source::Cached)),
            Err(e) => tracing::warn!(artifact = %a.display(), error = %e, "cached policy artifact unusable; compiling"),
        }
    }
    let c = Component::new(engine, bytes).map_err(|e| anyhow::anyhow!("not a WebAssembly component: {e}"))?;
    if let (Some(a), Ok(ser)) = (artifact, c.serialize()) {
        let tmp = a.with_extension("tmp");
        if std::fs::write(&tmp, ser).and_then(|_| std::fs::rename(&tmp, &a)).is_err() {
            tracing::warn!(artifact = %a.display(), "cannot cache the compiled policy module");
        }
    }
    Ok((c, Source::Compiled))
}

/// Create the artifact cache directory, private to the daemon.
pub fn cache_dir(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the policy cache {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// Does the component import WASI (at its top level)? Such a module
/// embeds a language runtime and is linked with [`no_wasi`] in the
/// runtime engine; any other import refuses it at link time.
fn imports_wasi(bytes: &[u8]) -> bool {
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::ModuleSection { .. } | wasmparser::Payload::ComponentSection { .. }) => depth += 1,
            Ok(wasmparser::Payload::End(_)) => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Ok(wasmparser::Payload::ComponentImportSection(imports)) if depth == 0 => {
                if imports.into_iter().flatten().any(|i| i.name.name.starts_with("wasi:")) {
                    return true;
                }
            }
            Ok(_) => {}
            // Not parseable: compiling says why.
            Err(_) => return false,
        }
    }
    false
}

/// Load and check the module in `file`; `noticed` is when its change was
/// seen. On success it is ready to swap in.
pub fn load(engines: &PolicyEngines, file: &Path, cache: Option<&Path>, noticed: Instant) -> Result<(Served, Source)> {
    let len = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
    if len > MAX_MODULE_BYTES {
        bail!("{} bytes, more than the {MAX_MODULE_BYTES} a policy module may have", len);
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let hash = sha256_hex(&bytes);
    let with_wasi = imports_wasi(&bytes);
    let engine = if with_wasi { &engines.runtime } else { &engines.small };
    let (component, source) = compile(engine, &bytes, &hash, cache)?;
    let mut linker = Linker::<PolicyState>::new(engine);
    if with_wasi {
        // WASI with nothing granted behind it (`no_wasi`).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("linking WASI: {e}"))?;
        no_waiting(&mut linker)?;
    }
    // Otherwise nothing in the linker: a module that imports anything
    // else (a clock, sockets, the host's crypto) does not link.
    let pre = linker.instantiate_pre(&component).and_then(PolicyPre::new).map_err(|e| {
        let imports: Vec<String> = component.component_type().imports(engine).map(|(n, _)| n.to_string()).collect();
        let may = if with_wasi { "only WASI" } else { "nothing" };
        anyhow::anyhow!("a policy module may import {may}, this one imports {}: {e}", imports.join(", "))
    })?;
    let served = Served {
        file: file.to_path_buf(),
        hash,
        pre,
        engine: engine.clone(),
        with_wasi,
        instance: Mutex::new(None),
        noticed,
        first_decided: AtomicBool::new(false),
    };
    match served.call(|s, b| b.wasmsec_policy_decide().call_self_test(s)) {
        Ok(Ok(())) => Ok((served, source)),
        Ok(Err(why)) => bail!("its self-test failed: {}", super::guest_text(&why, super::GUEST_REASON_CHARS)),
        Err(e) => bail!("its self-test did not finish: {e:#}"),
    }
}
