//! The batch decoder on any bytes, under any content type a producer may set: it returns a
//! message with an MPID other than 0, or an error with a reason code, and never panics.
#![no_main]

use audience_state::batch::{decode, DEFAULT_MAX_MESSAGE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the content-type header; the rest is the message.
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let content_type = match pick % 4 {
        0 => None,
        1 => Some("application/json"),
        2 => Some("application/x-protobuf"),
        _ => Some("text/plain"),
    };
    match decode(payload, content_type, DEFAULT_MAX_MESSAGE_BYTES) {
        Ok(inbound) => assert_ne!(inbound.mpid(), 0, "a decoded message has an MPID"),
        Err(error) => {
            assert!(!error.reason_code().is_empty());
            assert!(!error.to_string().is_empty());
        }
    }
});
