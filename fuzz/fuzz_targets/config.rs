#![no_main]

/// The targets check what a parse allocates (see `alloc_meter`).
#[global_allocator]
static METERED: wasmsec_fuzz_targets::alloc_meter::Metered = wasmsec_fuzz_targets::alloc_meter::Metered;

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmsec_fuzz_targets::config(data));
