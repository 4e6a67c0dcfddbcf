//! Linear memory for the few guests with guard regions (the IKE guest and
//! the ESP instances of the daemon's own routing domain): the layout
//! wasmtime gives them itself, a reservation of the address space with a
//! guard region before and after it, of which only the memory's current
//! length is readable and writable, so that the compiled code checks no
//! bounds (`sandbox::guarded_engine` says what that is worth).
//!
//! Made here and not by wasmtime only so that the host learns where an
//! ESP instance's memory lies: wasmtime does not show a component's core
//! memory to the host, and without its base the host cannot prefetch the
//! state of the daemon's own inbound SAs before a batch (the hints of
//! `state_hints`, #16), as it does for the instances in memory slots
//! (`memory_slots`, whose [`record_made`] both use).
#![allow(unsafe_code)] // the mappings, and wasmtime's traits for host-made memory are unsafe

use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

use super::memory_slots::{map_anonymous, page_size, record_made};

/// The memory creator of the guarded engine.
pub(crate) struct GuardedMemories;

// SAFETY: each memory is a mapping of its own: `reserved` bytes that never
// move, with `guard` bytes inaccessible before and after them, of which
// the first `minimum` bytes are readable, writable and zeroed (a new
// anonymous mapping); `grow_to` opens more of the reservation and never
// moves it.
unsafe impl MemoryCreator for GuardedMemories {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        _maximum: Option<usize>,
        reserved: Option<usize>,
        guard: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if ty.is_shared() || ty.is_64() {
            return Err("guests have one unshared 32-bit memory".into());
        }
        // The engine is configured with a reservation (wasmtime's default,
        // 4 GiB), which its compiled code relies on.
        let reserved = reserved.ok_or("a guarded guest memory needs a reservation")?;
        if minimum > reserved {
            return Err(format!("a memory of {minimum} bytes at the start is more than its reservation ({reserved})"));
        }
        let total = guard
            .checked_mul(2)
            .and_then(|g| g.checked_add(reserved))
            .ok_or("a guarded guest memory's reservation overflows")?;
        // Address space only: nothing is accessible yet.
        let start = map_anonymous(total, libc::PROT_NONE)
            .map_err(|e| format!("reserving {total} bytes for a guest memory: {e}"))?;
        let mut memory = GuardedMemory { start, total, base: start + guard, reserved, len: 0 };
        // On failure the memory is dropped, and its mapping with it.
        memory.grow_to(minimum).map_err(|e| e.to_string())?;
        record_made(memory.base, reserved);
        Ok(Box::new(memory))
    }
}

/// One guest's memory: the whole mapping, and the reservation in it.
struct GuardedMemory {
    /// The mapping: guard, reservation, guard.
    start: usize,
    total: usize,
    /// The reservation's first byte: the memory's base.
    base: usize,
    reserved: usize,
    /// The memory's length: its first so many bytes are accessible.
    len: usize,
}

// SAFETY: the base is fixed for the memory's life, and `len` bytes from it
// are accessible (opened by `grow_to`, zeroed as a new mapping is).
unsafe impl LinearMemory for GuardedMemory {
    fn byte_size(&self) -> usize {
        self.len
    }

    fn byte_capacity(&self) -> usize {
        self.reserved
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.reserved {
            wasmtime::bail!("a guest memory may not grow beyond its reservation of {} bytes", self.reserved);
        }
        // Pages are opened whole; what lies past `len` on the last one is
        // still beyond the memory for the compiled code, which checks
        // against the length where the guard does not cover it.
        let open = self.len.next_multiple_of(page_size());
        let want = new_size.next_multiple_of(page_size()).min(self.reserved);
        if want > open {
            // SAFETY: within this memory's reservation.
            let rc = unsafe {
                libc::mprotect((self.base + open) as *mut libc::c_void, want - open, libc::PROT_READ | libc::PROT_WRITE)
            };
            if rc != 0 {
                wasmtime::bail!("growing a guest memory to {new_size} bytes: {}", std::io::Error::last_os_error());
            }
        }
        self.len = self.len.max(new_size);
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base as *mut u8
    }
}

impl Drop for GuardedMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping `new_memory` made, no longer used.
        unsafe { libc::munmap(self.start as *mut libc::c_void, self.total) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The permissions `/proc/self/maps` shows for the page at `addr`.
    fn permissions(addr: usize) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let (range, rest) = line.split_once(' ').unwrap();
            let (from, to) = range.split_once('-').unwrap();
            let (from, to) = (usize::from_str_radix(from, 16).unwrap(), usize::from_str_radix(to, 16).unwrap());
            if (from..to).contains(&addr) {
                return rest[..4].to_string();
            }
        }
        panic!("{addr:#x} is not mapped");
    }

    #[test]
    fn only_the_length_is_accessible_and_growing_keeps_the_base_and_the_guards() {
        let (reserved, guard, page) = (16 << 20, 1 << 20, 65536);
        let mut m = GuardedMemories.new_memory(MemoryType::new(1, None), page, None, Some(reserved), guard).unwrap();
        let base = m.as_ptr() as usize;
        assert_eq!(permissions(base), "rw-p");
        assert_eq!(permissions(base + page), "---p", "beyond the length");
        assert_eq!(permissions(base - 1), "---p", "the guard before");
        assert_eq!(permissions(base + reserved), "---p", "the guard after");
        // SAFETY: within the memory's length.
        assert_eq!(unsafe { (base as *const u8).add(page - 1).read() }, 0);
        m.grow_to(3 * page).unwrap();
        assert_eq!(m.as_ptr() as usize, base);
        assert_eq!(permissions(base + 3 * page - 1), "rw-p");
        assert_eq!(permissions(base + 3 * page), "---p");
        assert!(m.grow_to(reserved + 1).is_err());
        assert_eq!(m.byte_size(), 3 * page);
    }

    #[test]
    fn a_memory_without_a_reservation_or_larger_than_it_is_refused() {
        let ty = MemoryType::new(1, None);
        assert!(GuardedMemories.new_memory(ty.clone(), 65536, None, None, 0).is_err());
        assert!(GuardedMemories.new_memory(ty, 2 << 20, None, Some(1 << 20), 0).is_err());
    }
}
