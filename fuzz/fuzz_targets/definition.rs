//! An audience definition as the API receives it (JSON criteria): parsed, then compiled when
//! it parses. Either step may refuse it with an error; neither may panic.
#![no_main]

use audience_state::criteria::{compile, parse_definition};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(criterion) = parse_definition(&value) {
        let _ = compile(&criterion);
    }
});
