//! The listener's own reader of HTTP/1.1 requests (`src/server/h1.rs`) on
//! arbitrary bytes, fed in pieces of an arbitrary size as reads would bring
//! them: it must never panic; a request's body has its `Content-Length`;
//! what it hands to hyper, or waits on, it gives back untouched.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    // The first byte: the read size, and the header field limit.
    let step = usize::from(first & 0x0f) * 16 + 1;
    let max_fields = usize::from(first >> 4) * 8 + 4;
    let _ = switchyard::server::read_requests(rest, step, max_fields);
});
