//! `try_decode_prefixed` (the TCP framing) over arbitrary bytes, repeated
//! until it makes no progress; the same stream fed in chunks must give the
//! same frames and the same error. See `pigeon_fuzz::check_frame_prefixed`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pigeon_fuzz::check_frame_prefixed(data));
