//! `decode_frame` (a WebSocket binary message) over arbitrary bytes; accepted
//! frames must round-trip through both wire encodings. See
//! `pigeon_fuzz::check_frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pigeon_fuzz::check_frame(data));
