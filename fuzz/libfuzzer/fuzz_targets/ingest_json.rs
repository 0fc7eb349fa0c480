#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| honeycell_fuzz::ingest_json(data));
