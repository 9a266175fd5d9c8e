//! A subscriber's cursor text: read or refused, never a panic; what is read writes back to a
//! text that reads the same.
#![no_main]

use audience_state::cursor::CursorText;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(read) = CursorText::parse(text) else {
        return;
    };
    if read.now || read.positions.is_empty() {
        return;
    }
    let again: Vec<String> = read
        .positions
        .iter()
        .map(|(p, s)| format!("p{p}={s}"))
        .collect();
    let reread = CursorText::parse(&again.join(",")).expect("a written cursor reads");
    assert_eq!(reread.positions, read.positions);
});
