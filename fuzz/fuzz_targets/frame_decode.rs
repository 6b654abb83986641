//! Frame headers and unmasking on arbitrary bytes.
//!
//! `decode_header` never panics; a decoded header re-encodes (shortest length form) to bytes
//! that decode to the same header, and every shorter prefix asks for more. Unmasking: every SIMD
//! path this CPU has agrees with the scalar one at any offset, masking in two pieces equals
//! masking whole, and masking twice restores the input.
#![no_main]

use clarion_protocol::frame::{MAX_HEADER_LEN, decode_header, encode_header, header_len};
use clarion_protocol::mask::{MaskPath, apply_mask, apply_mask_with, available_paths};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_header(data);
    check_mask(data);
});

fn check_header(data: &[u8]) {
    let Ok(Some((header, len))) = decode_header(data) else {
        return;
    };
    assert_eq!(len, header_len(data[1]));
    assert!(len <= MAX_HEADER_LEN && len <= data.len());
    for short in 0..len {
        assert_eq!(decode_header(&data[..short]), Ok(None), "prefix of {short}");
    }
    let mut encoded = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut encoded, &header);
    assert!(n <= len, "shortest form is never longer than what was read");
    assert_eq!(decode_header(&encoded[..n]), Ok(Some((header, n))));
    if n == len {
        assert_eq!(
            &encoded[..n],
            &data[..n],
            "a shortest-form header re-encodes as it was"
        );
    }
}

/// Input: 4 key bytes, an offset byte, a split byte, then the payload.
fn check_mask(data: &[u8]) {
    let [k0, k1, k2, k3, offset, split, payload @ ..] = data else {
        return;
    };
    let (key, offset) = ([*k0, *k1, *k2, *k3], usize::from(*offset));
    let mut expected = payload.to_vec();
    apply_mask_with(MaskPath::Scalar, &mut expected, key, offset);
    // Vector paths also meet the payload at every alignment.
    let pad = offset % 64;
    for path in available_paths() {
        let mut buf = vec![0u8; pad];
        buf.extend_from_slice(payload);
        apply_mask_with(path, &mut buf[pad..], key, offset);
        assert_eq!(
            buf[pad..],
            expected,
            "{} disagrees with scalar",
            path.name()
        );
    }
    let mut pieces = payload.to_vec();
    let at = pieces.len() * usize::from(*split) / 255;
    let (head, tail) = pieces.split_at_mut(at);
    apply_mask(head, key, offset);
    apply_mask(tail, key, offset + at);
    assert_eq!(pieces, expected, "masking in two pieces");
    apply_mask(&mut pieces, key, offset);
    assert_eq!(pieces, payload, "masking twice restores");
}
