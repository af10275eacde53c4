//! Feeds arbitrary bytes to the frame decoder the way a socket would: in
//! chunks of fuzzer-chosen sizes, decoding repeatedly after each chunk. The
//! decoder must never panic, never consume input without returning a frame,
//! and every frame it returns must survive a re-encode/decode round trip.
#![no_main]

use bytes::BytesMut;
use gd_core::transport::frame::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First two bytes choose the chunk size and the max frame size, so the
    // fuzzer explores both partial reads and the size limit.
    let [chunk, max, rest @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let max = usize::from(*max) * 64;
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.clone();
            match decode(&mut buf, max) {
                Ok(Some(frame)) => {
                    let mut again = BytesMut::new();
                    encode(&frame, &mut again, max).unwrap();
                    assert_eq!(decode(&mut again, max).unwrap(), Some(frame));
                    assert!(again.is_empty());
                }
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) consumed input");
                    break;
                }
                Err(_) => {
                    assert_eq!(buf, before, "an error consumed input");
                    return;
                }
            }
        }
    }
});
