//! WebSocket payload masking (RFC 6455 §5.3): byte `i` of a masked payload is
//! XORed with `key[i % 4]`, and applying the same mask again undoes it.
//!
//! Every byte a client sends passes through here, so the XOR is vectorised with
//! `std::arch` (SSE2, AVX2, AVX-512 on x86_64; NEON on aarch64). The best path
//! for the CPU is detected once at run time and cached; a portable scalar path
//! covers other targets and the tails the vector loops leave; buffers under
//! 512 bytes take the target's baseline vectors inline, without the dispatch.

use std::sync::atomic::{AtomicU8, Ordering};

/// Which implementation unmasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskPath {
    /// Portable code, 8 bytes at a time; works everywhere.
    Scalar,
    /// 16-byte SSE2 vectors (x86_64).
    Sse2,
    /// 32-byte AVX2 vectors (x86_64).
    Avx2,
    /// 64-byte AVX-512F vectors (x86_64).
    Avx512,
    /// 16-byte NEON vectors (aarch64).
    Neon,
}

impl MaskPath {
    /// Every path in declaration order (so `path as usize` is its index),
    /// which is also worst to best within each architecture.
    const ALL: [MaskPath; 5] = [
        MaskPath::Scalar,
        MaskPath::Sse2,
        MaskPath::Avx2,
        MaskPath::Avx512,
        MaskPath::Neon,
    ];

    /// Short lower-case name, e.g. `"avx2"`, for logs and benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            MaskPath::Scalar => "scalar",
            MaskPath::Sse2 => "sse2",
            MaskPath::Avx2 => "avx2",
            MaskPath::Avx512 => "avx512",
            MaskPath::Neon => "neon",
        }
    }
}

/// Below this many bytes the wider paths (AVX2, AVX-512) save nothing over the
/// target's baseline vectors (SSE2 on x86_64, NEON on aarch64), so `apply_mask`
/// masks them inline on the baseline path and skips the cached-path load and the
/// call through the dispatch: a 32-byte echo's unmasking went from 127 to about
/// 30 instructions.
const WIDE_MIN_LEN: usize = 512;

/// `detected_path()` as an index into `MaskPath::ALL`, or `UNDETECTED`.
static DETECTED: AtomicU8 = AtomicU8::new(UNDETECTED);
const UNDETECTED: u8 = u8::MAX;

/// XOR `buf` with `key`, as if `buf` started at byte `offset` of a masked payload
/// (offset matters when a frame's payload arrives in several reads). Uses the best path for this CPU.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = key_at(key, offset);
    if buf.len() < WIDE_MIN_LEN {
        return baseline(buf, key);
    }
    // SAFETY: `detected_path()` only returns a path `supported()` confirmed.
    unsafe { run(detected_path(), buf, key) }
}

/// Same, on a chosen path; panics if `path` is not in `available_paths()`. For tests and benches.
pub fn apply_mask_with(path: MaskPath, buf: &mut [u8], key: [u8; 4], offset: usize) {
    assert!(
        supported(path),
        "mask path {} is not available on this CPU",
        path.name()
    );
    // SAFETY: support for `path` was asserted just above.
    unsafe { run(path, buf, key_at(key, offset)) }
}

/// Paths this CPU supports, scalar first.
pub fn available_paths() -> Vec<MaskPath> {
    MaskPath::ALL
        .into_iter()
        .filter(|&p| supported(p))
        .collect()
}

/// The path `apply_mask` uses.
pub fn detected_path() -> MaskPath {
    // Relaxed is enough: every thread that races here computes the same value.
    match DETECTED.load(Ordering::Relaxed) {
        UNDETECTED => {
            let best = MaskPath::ALL
                .into_iter()
                .rfind(|&p| supported(p))
                .unwrap_or(MaskPath::Scalar);
            DETECTED.store(best as u8, Ordering::Relaxed);
            best
        }
        index => MaskPath::ALL[usize::from(index)],
    }
}

/// Whether this CPU can run `path`.
fn supported(path: MaskPath) -> bool {
    match path {
        MaskPath::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        MaskPath::Sse2 => std::arch::is_x86_feature_detected!("sse2"),
        #[cfg(target_arch = "x86_64")]
        MaskPath::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
        #[cfg(target_arch = "x86_64")]
        MaskPath::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
        #[cfg(target_arch = "aarch64")]
        MaskPath::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        // Paths of other architectures.
        _ => false,
    }
}

/// The key as seen from byte `offset` of the payload, so the paths below can
/// always start at key byte 0 (and a frame read in pieces can go on where it stopped).
pub(crate) fn key_at(key: [u8; 4], offset: usize) -> [u8; 4] {
    // A rotate on the integer, as `<[u8]>::rotate_left` compiles to memmove.
    let shift = 8 * (offset % 4) as u32;
    u32::from_le_bytes(key).rotate_right(shift).to_le_bytes()
}

/// Masks `buf` (starting at key byte 0) on `path`.
///
/// # Safety
/// The CPU must support `path` (`supported(path)` is true).
unsafe fn run(path: MaskPath, buf: &mut [u8], key: [u8; 4]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller guarantees the CPU has SSE2.
        MaskPath::Sse2 => unsafe { x86::sse2(buf, key) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller guarantees the CPU has AVX2.
        MaskPath::Avx2 => unsafe { x86::avx2(buf, key) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller guarantees the CPU has AVX-512F.
        MaskPath::Avx512 => unsafe { x86::avx512(buf, key) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the caller guarantees the CPU has NEON.
        MaskPath::Neon => unsafe { arm::neon(buf, key) },
        // Scalar, and (unreachable, as unsupported) other architectures' paths.
        _ => scalar(buf, key),
    }
}

/// The vectors every CPU of the target has, inlined: SSE2 on x86_64, NEON on
/// aarch64, scalar elsewhere.
#[inline]
fn baseline(buf: &mut [u8], key: [u8; 4]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86_64 baseline: every CPU this build runs on has it.
    unsafe {
        x86::sse2(buf, key)
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of the aarch64 baseline: every CPU this build runs on has it.
    unsafe {
        arm::neon(buf, key)
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    scalar(buf, key);
}

/// Portable path: one `u64` (the key twice) per 8 bytes, then at most one
/// `u32` and three single bytes.
fn scalar(buf: &mut [u8], key: [u8; 4]) {
    let [a, b, c, d] = key;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ wide).to_ne_bytes();
    }
    // Whole words and quads keep the key phase, so each rest starts at key byte 0.
    let (quads, bytes) = tail.as_chunks_mut::<4>();
    for quad in quads {
        *quad = (u32::from_ne_bytes(*quad) ^ u32::from_ne_bytes(key)).to_ne_bytes();
    }
    for (byte, k) in bytes.iter_mut().zip(key) {
        *byte ^= k;
    }
}

/// x86_64 vector paths. Each handles whole vectors with unaligned loads and
/// stores, the AVX paths leaving the bytes before an aligned address and the
/// remainder to SSE2, and SSE2 its remainder to scalar. Vector widths are
/// multiples of 4, so each remainder starts at key byte 0.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{WIDE_MIN_LEN, key_at, scalar};
    use std::arch::x86_64::{
        __m128i, __m256i, __m512i, _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128,
        _mm_xor_si128, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256,
        _mm256_xor_si256, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_storeu_si512,
        _mm512_xor_si512,
    };

    // Inlined into the wider paths, which use it for their heads and tails.
    #[inline]
    #[target_feature(enable = "sse2")]
    pub(super) fn sse2(buf: &mut [u8], key: [u8; 4]) {
        // x86 is little-endian, so each lane holds the key bytes in order.
        let k = _mm_set1_epi32(i32::from_ne_bytes(key));
        let (blocks, rest) = buf.as_chunks_mut::<16>();
        for block in blocks {
            let p = block.as_mut_ptr().cast::<__m128i>();
            // SAFETY: `p` covers exactly the 16 bytes of `block`, which we hold
            // mutably; loadu/storeu accept any alignment.
            unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), k)) };
        }
        scalar(rest, key);
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn avx2(buf: &mut [u8], key: [u8; 4]) {
        if buf.len() < WIDE_MIN_LEN {
            return sse2(buf, key);
        }
        // Step up to a 32-byte boundary (under 32 bytes away, so within `buf`),
        // so that no access straddles a cache line: on misaligned buffers that
        // about doubles throughput.
        let (head, buf) = buf.split_at_mut(buf.as_ptr().align_offset(32));
        sse2(head, key);
        let key = key_at(key, head.len());
        let k = _mm256_set1_epi32(i32::from_ne_bytes(key));
        let (blocks, rest) = buf.as_chunks_mut::<32>();
        for block in blocks {
            let p = block.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `p` covers exactly the 32 bytes of `block`, which we hold
            // mutably; loadu/storeu accept any alignment.
            unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), k)) };
        }
        sse2(rest, key);
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn avx512(buf: &mut [u8], key: [u8; 4]) {
        if buf.len() < WIDE_MIN_LEN {
            return sse2(buf, key);
        }
        // Step up to a 64-byte boundary (under 64 bytes away, so within `buf`),
        // so that no access straddles a cache line: on misaligned buffers that
        // about doubles throughput.
        let (head, buf) = buf.split_at_mut(buf.as_ptr().align_offset(64));
        sse2(head, key);
        let key = key_at(key, head.len());
        let k = _mm512_set1_epi32(i32::from_ne_bytes(key));
        let (blocks, rest) = buf.as_chunks_mut::<64>();
        for block in blocks {
            let p = block.as_mut_ptr().cast::<__m512i>();
            // SAFETY: `p` covers exactly the 64 bytes of `block`, which we hold
            // mutably; loadu/storeu accept any alignment.
            unsafe { _mm512_storeu_si512(p, _mm512_xor_si512(_mm512_loadu_si512(p), k)) };
        }
        sse2(rest, key);
    }
}

/// aarch64 vector path: whole 16-byte vectors, then scalar for the remainder
/// (which starts at key byte 0, as 16 is a multiple of 4).
#[cfg(target_arch = "aarch64")]
mod arm {
    use super::scalar;
    use std::arch::aarch64::{veorq_u8, vld1q_u8, vst1q_u8};

    #[target_feature(enable = "neon")]
    pub(super) fn neon(buf: &mut [u8], key: [u8; 4]) {
        let [a, b, c, d] = key;
        let pattern = [a, b, c, d, a, b, c, d, a, b, c, d, a, b, c, d];
        // SAFETY: `pattern` is 16 readable bytes; vld1q_u8 needs no alignment.
        let k = unsafe { vld1q_u8(pattern.as_ptr()) };
        let (blocks, rest) = buf.as_chunks_mut::<16>();
        for block in blocks {
            let p = block.as_mut_ptr();
            // SAFETY: `p` covers exactly the 16 bytes of `block`, which we hold
            // mutably; vld1q_u8/vst1q_u8 need no alignment.
            unsafe { vst1q_u8(p, veorq_u8(vld1q_u8(p), k)) };
        }
        scalar(rest, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Deterministic pseudo-random bytes (xorshift64).
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    }

    /// RFC 6455 §5.3 taken literally.
    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn every_path_matches_scalar_for_all_lengths_offsets_and_alignments() {
        const MAX: usize = 4096;
        // Bytes around the slice that no path may touch.
        const GUARD: usize = 64;
        const FILL: u8 = 0xa5;
        let data = noise(MAX);
        let mut work = vec![FILL; 3 + MAX + GUARD];
        for offset in 0..4 {
            // Masking is bytewise, so a prefix of the whole masked buffer is
            // the expected result for every shorter length.
            let mut expected = data.clone();
            apply_mask_with(MaskPath::Scalar, &mut expected, KEY, offset);
            for path in available_paths() {
                for start in 0..=3 {
                    for len in 0..=MAX {
                        let end = start + len;
                        work[start..end].copy_from_slice(&data[..len]);
                        apply_mask_with(path, &mut work[start..end], KEY, offset);
                        assert!(
                            work[start..end] == expected[..len],
                            "{path:?} differs: len {len}, offset {offset}, start {start}"
                        );
                        assert!(
                            work[..start]
                                .iter()
                                .chain(&work[end..end + GUARD])
                                .all(|&b| b == FILL),
                            "{path:?} wrote outside its slice: len {len}, start {start}"
                        );
                        work[start..end].fill(FILL);
                    }
                }
            }
        }
    }

    #[test]
    fn scalar_matches_naive_reference() {
        let data = noise(300);
        for offset in 0..8 {
            for start in 0..=3 {
                for len in 0..=data.len() - start {
                    let mut got = data[start..start + len].to_vec();
                    let mut want = got.clone();
                    apply_mask_with(MaskPath::Scalar, &mut got, KEY, offset);
                    naive(&mut want, KEY, offset);
                    assert_eq!(got, want, "len {len}, offset {offset}, start {start}");
                }
            }
        }
    }

    #[test]
    fn masking_twice_restores_input() {
        let data = noise(4099);
        for len in [0, 1, 3, 15, 16, 17, 31, 33, 63, 64, 65, 127, 1460, 4099] {
            for offset in 0..4 {
                for path in available_paths() {
                    let mut buf = data[..len].to_vec();
                    apply_mask_with(path, &mut buf, KEY, offset);
                    apply_mask_with(path, &mut buf, KEY, offset);
                    assert_eq!(buf, data[..len], "{path:?}, len {len}, offset {offset}");
                }
                let mut buf = data[..len].to_vec();
                apply_mask(&mut buf, KEY, offset);
                apply_mask(&mut buf, KEY, offset);
                assert_eq!(buf, data[..len], "apply_mask, len {len}, offset {offset}");
            }
        }
    }

    #[test]
    fn masking_in_two_pieces_equals_masking_whole() {
        let data = noise(777);
        let mut whole = data.clone();
        naive(&mut whole, KEY, 0);
        let mut buf = data.clone();
        let paths = available_paths();
        // `None` stands for `apply_mask`, the dispatching entry point.
        for path in paths.iter().copied().map(Some).chain([None]) {
            let mask = |buf: &mut [u8], offset| match path {
                Some(path) => apply_mask_with(path, buf, KEY, offset),
                None => apply_mask(buf, KEY, offset),
            };
            for split in 0..=data.len() {
                buf.copy_from_slice(&data);
                let (first, second) = buf.split_at_mut(split);
                mask(first, 0);
                mask(second, split);
                assert!(buf == whole, "{path:?}, split at {split}");
            }
        }
    }

    #[test]
    fn detected_path_is_the_best_available() {
        let paths = available_paths();
        assert_eq!(paths[0], MaskPath::Scalar);
        assert_eq!(Some(&detected_path()), paths.last());
        // The cached answer stays the same.
        assert_eq!(Some(&detected_path()), paths.last());
    }

    #[test]
    #[should_panic(expected = "not available")]
    fn unavailable_path_panics() {
        let missing = MaskPath::ALL.into_iter().find(|&p| !supported(p));
        // Every target lacks at least one other architecture's path.
        apply_mask_with(missing.unwrap(), &mut [0; 32], KEY, 0);
    }
}
