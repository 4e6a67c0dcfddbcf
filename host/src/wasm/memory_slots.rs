//! Linear memory for the many small guests (ESP, policy modules): every
//! instance's memory is a fixed slot of one read-write mapping made when
//! the engine is, so making an instance changes no mapping at all.
//!
//! Why not wasmtime's pooling allocator (#13): it keeps its slots
//! inaccessible and opens each new instance's initial memory with an
//! `mprotect`, which splits the pool's mapping twice per instance. That
//! split was a third of an instantiation in a fresh slot, and 30,000
//! instances took 64,000 of the kernel's default 65,530 mappings. Here the
//! guests' bounds are checked by the compiled code against the memory's
//! current length (no guard region: [`super::sandbox`] configures a guard
//! of 0 bytes, so no access is left to a fault), and growing a memory is
//! moving its length within its slot.
//!
//! A slot's pages are given back to the kernel (`MADV_DONTNEED`, which
//! also makes them read as zeros, as a new memory must) when its memory is
//! dropped; only the pages a guest touched cost anything.
#![allow(unsafe_code)] // the mapping, and wasmtime's traits for host-made memory are unsafe

use std::sync::{Arc, Mutex};

use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// One mapping cut into `count` slots of `slot` bytes each.
struct Region {
    base: usize,
    slot: usize,
    count: usize,
    /// Slots not in use: freed ones last (taken first, so their page
    /// tables are reused), then those never used.
    free: Mutex<Vec<u32>>,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `MemorySlots::new` with this
        // length, and every memory holds the region, so none is left.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.slot * self.count) };
    }
}

/// The memory creator an engine of small guests is configured with.
pub(crate) struct MemorySlots {
    region: Arc<Region>,
}

impl MemorySlots {
    /// Reserve `count` slots of `slot` bytes (a multiple of the page size).
    /// The mapping takes address space, not memory: `MAP_NORESERVE` keeps
    /// it out of the commit charge (with `vm.overcommit_memory=2` the
    /// kernel counts it in full, and a large pool may be refused).
    pub(crate) fn new(slot: usize, count: u32) -> anyhow::Result<MemorySlots> {
        let len = slot.checked_mul(count as usize).ok_or_else(|| anyhow::anyhow!("memory slots overflow"))?;
        let base = map_anonymous(len, libc::PROT_READ | libc::PROT_WRITE).map_err(|e| {
            anyhow::anyhow!("reserving {count} guest memory slots of {} MiB ({} GiB): {e}", slot >> 20, len >> 30)
        })?;
        // Transparent huge pages would give an instance that touches one
        // page of its slot 2 MiB of memory.
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(base as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE) };
        let free = Mutex::new((0..count).rev().collect());
        Ok(MemorySlots { region: Arc::new(Region { base, slot, count: count as usize, free }) })
    }
}

impl MemorySlots {
    /// Slots held by live memories: the guest instances of the engine.
    pub(crate) fn in_use(&self) -> usize {
        let r = &self.region;
        r.count - r.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

// SAFETY: each memory gets a slot no other memory has until it is dropped;
// the slot is zeroed (never used, or given back with MADV_DONTNEED) and
// never moves; its capacity is the slot, so growing never relocates it.
unsafe impl MemoryCreator for MemorySlots {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        _maximum: Option<usize>,
        reserved: Option<usize>,
        guard: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let r = &self.region;
        if guard != 0 || reserved.is_some_and(|v| v > r.slot) || ty.is_shared() || ty.is_64() {
            return Err(format!("a guest memory slot is {} bytes with no guard region", r.slot));
        }
        if minimum > r.slot {
            return Err(format!("a memory of {minimum} bytes at the start is more than a guest may have ({})", r.slot));
        }
        let index = r
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or_else(|| format!("all {} guest memory slots are in use", r.count))?;
        let memory = SlotMemory { region: r.clone(), index, len: minimum, touched: minimum };
        record_made(memory.base() as usize, r.slot);
        Ok(Box::new(memory))
    }
}

thread_local! {
    /// The memories this thread made since [`clear_last_made`] (here, or
    /// in `guarded_memory`): wasmtime makes an instance's memories on the
    /// instantiating thread, and does not show a component's core memory
    /// to the host.
    static LAST_MADE: std::cell::Cell<LastMade> = const { std::cell::Cell::new(LastMade::Nothing) };
}

#[derive(Debug, Clone, Copy)]
enum LastMade {
    Nothing,
    /// One memory: its slot's base address and size.
    One(usize, usize),
    /// More than one: which is the instance's is not known.
    More,
}

/// Note a memory made on this thread: its base address and the size of
/// the address space it may grow in (its slot or reservation).
pub(crate) fn record_made(base: usize, size: usize) {
    LAST_MADE.set(match LAST_MADE.get() {
        LastMade::Nothing => LastMade::One(base, size),
        _ => LastMade::More,
    });
}

/// Start counting the memories this thread makes; call before an
/// instantiation whose memory [`take_last_made`] is to find.
pub(crate) fn clear_last_made() {
    LAST_MADE.set(LastMade::Nothing);
}

/// The slot or reservation (base address and size in bytes) of the one memory made on
/// this thread since [`clear_last_made`]: where an instance with one memory
/// lives. `None` if none was made, or several.
pub(crate) fn take_last_made() -> Option<(usize, usize)> {
    match LAST_MADE.replace(LastMade::Nothing) {
        LastMade::One(base, size) => Some((base, size)),
        _ => None,
    }
}

/// One instance's memory: its slot and current length.
struct SlotMemory {
    region: Arc<Region>,
    index: u32,
    len: usize,
    /// The largest length it had: the pages to give back.
    touched: usize,
}

impl SlotMemory {
    fn base(&self) -> *mut u8 {
        (self.region.base + self.index as usize * self.region.slot) as *mut u8
    }
}

// SAFETY: the base is fixed for the memory's life, `len` bytes of it are
// mapped read-write and zeroed when the memory is new, and `grow_to` only
// moves the length within the slot.
unsafe impl LinearMemory for SlotMemory {
    fn byte_size(&self) -> usize {
        self.len
    }

    fn byte_capacity(&self) -> usize {
        self.region.slot
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.region.slot {
            wasmtime::bail!("a guest memory may not grow beyond {} bytes", self.region.slot);
        }
        self.len = new_size;
        self.touched = self.touched.max(new_size);
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base()
    }
}

impl Drop for SlotMemory {
    fn drop(&mut self) {
        let len = self.touched.next_multiple_of(page_size()).min(self.region.slot);
        // SAFETY: the range is this memory's own slot, no longer used.
        let rc = unsafe { libc::madvise(self.base().cast(), len, libc::MADV_DONTNEED) };
        if rc != 0 {
            // A slot that may not read as zeros is never handed out again.
            tracing::error!("giving back a guest memory slot: {}", std::io::Error::last_os_error());
            return;
        }
        self.region.free.lock().unwrap_or_else(|p| p.into_inner()).push(self.index);
    }
}

/// A new private anonymous mapping of `len` bytes with protection `prot`,
/// its address; the caller owns it (and unmaps it). `MAP_NORESERVE`: address
/// space, not memory, and out of the commit charge until touched.
pub(crate) fn map_anonymous(len: usize, prot: i32) -> std::io::Result<usize> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a new anonymous mapping at an address the kernel picks; it
    // overlaps nothing, and the caller owns it from here.
    let at = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
    if at == libc::MAP_FAILED { Err(std::io::Error::last_os_error()) } else { Ok(at as usize) }
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as usize } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty() -> MemoryType {
        MemoryType::new(1, None)
    }

    #[test]
    fn a_slot_comes_back_zeroed_and_the_pool_runs_out_cleanly() {
        let slots = MemorySlots::new(1 << 20, 2).unwrap();
        let mut a = slots.new_memory(ty(), 65536, None, Some(1 << 20), 0).unwrap();
        let b = slots.new_memory(ty(), 65536, None, Some(1 << 20), 0).unwrap();
        assert_ne!(a.as_ptr(), b.as_ptr());
        let err = slots.new_memory(ty(), 65536, None, Some(1 << 20), 0).err().unwrap();
        assert!(err.contains("all 2 guest memory slots are in use"), "{err}");
        a.grow_to(3 << 16).unwrap();
        assert!(a.grow_to((1 << 20) + 1).is_err());
        let at = a.as_ptr();
        // SAFETY: within the memory's current length.
        unsafe { at.add((3 << 16) - 1).write(7) };
        drop(a);
        let again = slots.new_memory(ty(), 65536, None, Some(1 << 20), 0).unwrap();
        assert_eq!(again.as_ptr(), at);
        // SAFETY: within the slot, which was given back zeroed.
        assert_eq!(unsafe { at.add((3 << 16) - 1).read() }, 0);
    }

    #[test]
    fn a_guard_region_or_a_larger_reservation_is_refused() {
        let slots = MemorySlots::new(1 << 20, 1).unwrap();
        assert!(slots.new_memory(ty(), 65536, None, Some(1 << 20), 65536).is_err());
        assert!(slots.new_memory(ty(), 65536, None, Some(2 << 20), 0).is_err());
        assert!(slots.new_memory(ty(), 2 << 20, None, Some(1 << 20), 0).is_err());
    }
}
