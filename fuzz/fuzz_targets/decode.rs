#![no_main]
//! Message decoding: any bytes from a topic (see fuzz/checks/decode.rs).

include!("../checks/decode.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check_decode(data));
