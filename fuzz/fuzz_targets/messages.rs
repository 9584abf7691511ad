//! Every protobuf message type of `pigeon_proto::v1`: the first byte picks
//! the type, the rest is decoded; what decodes must re-encode and decode to
//! an equal message. See `pigeon_fuzz::check_messages`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pigeon_fuzz::check_messages(data));
