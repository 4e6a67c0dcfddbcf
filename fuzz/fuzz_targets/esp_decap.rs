#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmsec_fuzz_targets::esp_decap(data));
