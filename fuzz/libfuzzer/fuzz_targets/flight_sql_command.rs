#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| honeycell_fuzz::flight_sql_command(data));
