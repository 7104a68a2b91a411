#![no_main]
//! The agent protocol: turn parsing and prompt escaping (see fuzz/checks/protocol.rs).

include!("../checks/protocol.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check_protocol(data));
