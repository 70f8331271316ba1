//! A segment's manifest and its pieces: what the source signs, and how a receiver checks each
//! piece of a segment against it.
//!
//! The source cuts every segment into pieces of [`PIECE_SIZE`] bytes (the last one shorter) and
//! signs one small manifest per segment: sequence, ingest time, duration, flags, total length
//! and a [`PieceHash`] per piece (sha256 truncated to [`PIECE_HASH_LEN`] bytes). The manifest is
//! the head of a segment on the wire and travels before the bytes; a receiver that has checked
//! the manifest's signature checks every piece against its hash, so one bad piece is caught on
//! its own, and what has been checked can be used before the rest arrives.
//!
//! Why a hash per piece and not a Merkle root (libswift): a 1 s segment of a 768 kbit/s stream
//! is 6 pieces, and the whole list costs 96 bytes, sent once per segment and per link (0.1 % of
//! the segment); a Merkle root would save those bytes in the manifest but send log2(n) sibling
//! hashes with every piece, more in total at these piece counts, and a receiver would have to
//! hold the uncles. The largest segment ([`MAX_SEGMENT_BYTES`]) has [`MAX_PIECES`] pieces, a
//! 4 KiB list, which still fits a control frame. 128 bits of a sha256 leave a forger a second
//! preimage to find (2^128 work): collisions do not help anyone but the source, which signs.
//!
//! This module holds no keys: the driver signs and checks signatures over
//! [`Manifest::signed_bytes`] (the core never sees an unchecked manifest or piece).

use super::seq::Seq;
use super::wire::{ChannelId, Signature, MAX_SEGMENT_BYTES};
use core::fmt;
use core::ops::Range;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes of one piece (the last piece of a segment may be shorter). 16 KiB: a 1 s segment of a
/// 768 kbit/s stream is 6 pieces; a piece takes 0.33 s to send at half the stream rate, the
/// slowest uplink of the default mix, which bounds the delay one hop of cut-through adds; and
/// it is the link writer's pacing chunk, so control frames wait for one piece at most.
pub const PIECE_SIZE: usize = 16 * 1024;
/// Bytes of a piece's hash in the manifest.
pub const PIECE_HASH_LEN: usize = 16;
/// Most pieces a segment may have: the largest segment cut at [`PIECE_SIZE`].
pub const MAX_PIECES: usize = (MAX_SEGMENT_BYTES as usize).div_ceil(PIECE_SIZE);
/// Most bytes a manifest takes in postcard: its fixed fields at their longest varints (32), the
/// hash count's varint (3) and signature (64), and [`MAX_PIECES`] hashes. A segment head still
/// incomplete after this many bytes is not a manifest, whatever its hash count claims.
pub const MAX_MANIFEST_LEN: usize = 32 + 3 + MAX_PIECES * PIECE_HASH_LEN + 64;
/// Domain separation for what the source signs.
pub const SIGNING_DOMAIN: &[u8] = b"coolstream-manifest-v1";

/// A piece's hash: the first [`PIECE_HASH_LEN`] bytes of its sha256.
pub type PieceHash = [u8; PIECE_HASH_LEN];

/// What the source signs for one segment (the head of a segment on the wire).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub seq: Seq,
    /// When the source finished ingesting the segment, in the source's microseconds.
    pub origin_us: u64,
    pub duration_us: u32,
    pub flags: u8,
    /// Media bytes of the whole segment.
    pub len: u32,
    /// One per piece, in order: exactly [`piece_count`]`(len)` of them.
    pub hashes: Vec<PieceHash>,
    pub signature: Signature,
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Manifest({:?}, {} bytes, {} pieces)",
            self.seq,
            self.len,
            self.hashes.len()
        )
    }
}

/// Why a manifest or a piece is refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PieceError {
    /// The manifest declares more than [`MAX_SEGMENT_BYTES`].
    TooLong { len: u32 },
    /// The manifest's hash count does not match its length.
    HashCount { declared: usize, expected: usize },
    /// A piece index past the last piece.
    NoSuchPiece { index: usize, count: usize },
    /// A piece whose length is not what the manifest says.
    PieceLength {
        index: usize,
        len: usize,
        expected: usize,
    },
    /// A piece whose bytes do not hash to the manifest's entry.
    BadHash { index: usize },
}

impl fmt::Display for PieceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PieceError::TooLong { len } => {
                write!(f, "manifest declares {len} bytes, over {MAX_SEGMENT_BYTES}")
            }
            PieceError::HashCount { declared, expected } => write!(
                f,
                "manifest lists {declared} piece hashes for {expected} pieces"
            ),
            PieceError::NoSuchPiece { index, count } => {
                write!(f, "piece {index} of a segment of {count} pieces")
            }
            PieceError::PieceLength {
                index,
                len,
                expected,
            } => write!(
                f,
                "piece {index} has {len} bytes, the manifest says {expected}"
            ),
            PieceError::BadHash { index } => write!(f, "piece {index} does not match its hash"),
        }
    }
}
impl std::error::Error for PieceError {}

/// Pieces of a segment of `len` bytes (an empty segment has none).
pub fn piece_count(len: u32) -> usize {
    (len as usize).div_ceil(PIECE_SIZE)
}

/// Byte range of piece `index` in a segment of `len` bytes (empty past the end).
pub fn piece_range(len: u32, index: usize) -> Range<usize> {
    let len = len as usize;
    let start = index.saturating_mul(PIECE_SIZE).min(len);
    start..start.saturating_add(PIECE_SIZE).min(len)
}

/// The hash of one piece's bytes.
pub fn piece_hash(bytes: &[u8]) -> PieceHash {
    let d = Sha256::digest(bytes);
    let mut out = [0u8; PIECE_HASH_LEN];
    out.copy_from_slice(&d[..PIECE_HASH_LEN]);
    out
}

/// Bytes a manifest with `pieces` hashes adds to a postcard encoding of one with none (the
/// list's varint length grows, and each hash is its bytes).
pub fn hashes_encoded_len(pieces: usize) -> usize {
    let mut varint = 1;
    let mut n = pieces >> 7;
    while n > 0 {
        varint += 1;
        n >>= 7;
    }
    varint - 1 + pieces * PIECE_HASH_LEN
}

impl Manifest {
    /// The manifest of `data` (signature left empty: the driver signs [`Self::signed_bytes`]).
    pub fn for_data(seq: Seq, origin_us: u64, duration_us: u32, flags: u8, data: &[u8]) -> Self {
        let len = data.len() as u32;
        Manifest {
            seq,
            origin_us,
            duration_us,
            flags,
            len,
            hashes: (0..piece_count(len))
                .map(|i| piece_hash(&data[piece_range(len, i)]))
                .collect(),
            signature: [[0; 32]; 2],
        }
    }

    /// Checks the bounds a signature cannot vouch for: the length cap and one hash per piece.
    pub fn validate(&self) -> Result<(), PieceError> {
        if self.len > MAX_SEGMENT_BYTES {
            return Err(PieceError::TooLong { len: self.len });
        }
        let expected = piece_count(self.len);
        if self.hashes.len() != expected {
            return Err(PieceError::HashCount {
                declared: self.hashes.len(),
                expected,
            });
        }
        Ok(())
    }

    pub fn piece_count(&self) -> usize {
        piece_count(self.len)
    }

    /// What the source signs: a domain, the channel and every field but the signature
    /// (integers big-endian), so a relay can neither alter a piece nor re-stamp a manifest.
    pub fn signed_bytes(&self, channel: &ChannelId) -> Vec<u8> {
        let mut m = Vec::with_capacity(
            SIGNING_DOMAIN.len() + 32 + 4 + 8 + 4 + 1 + 4 + 4 + self.hashes.len() * PIECE_HASH_LEN,
        );
        m.extend_from_slice(SIGNING_DOMAIN);
        m.extend_from_slice(&channel.0);
        m.extend_from_slice(&self.seq.0.to_be_bytes());
        m.extend_from_slice(&self.origin_us.to_be_bytes());
        m.extend_from_slice(&self.duration_us.to_be_bytes());
        m.push(self.flags);
        m.extend_from_slice(&self.len.to_be_bytes());
        m.extend_from_slice(&(self.hashes.len() as u32).to_be_bytes());
        for h in &self.hashes {
            m.extend_from_slice(h);
        }
        m
    }

    /// Checks piece `index` against this (already validated) manifest.
    pub fn check_piece(&self, index: usize, bytes: &[u8]) -> Result<(), PieceError> {
        let count = self.hashes.len();
        if index >= count {
            return Err(PieceError::NoSuchPiece { index, count });
        }
        let expected = piece_range(self.len, index).len();
        if bytes.len() != expected {
            return Err(PieceError::PieceLength {
                index,
                len: bytes.len(),
                expected,
            });
        }
        if piece_hash(bytes) != self.hashes[index] {
            return Err(PieceError::BadHash { index });
        }
        Ok(())
    }

    /// Checks a whole segment's bytes, piece by piece (the first bad piece is named).
    pub fn check_all(&self, data: &[u8]) -> Result<(), PieceError> {
        self.validate()?;
        if data.len() != self.len as usize {
            let last = self.hashes.len().saturating_sub(1);
            return Err(PieceError::PieceLength {
                index: last,
                len: data.len(),
                expected: self.len as usize,
            });
        }
        for i in 0..self.hashes.len() {
            self.check_piece(i, &data[piece_range(self.len, i)])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 255) as u8).collect()
    }

    #[test]
    fn pieces_tile_the_segment_and_the_last_is_short() {
        assert_eq!(piece_count(0), 0);
        assert_eq!(piece_count(1), 1);
        assert_eq!(piece_count(PIECE_SIZE as u32), 1);
        assert_eq!(piece_count(PIECE_SIZE as u32 + 1), 2);
        assert_eq!(piece_count(MAX_SEGMENT_BYTES), MAX_PIECES);
        let len = 96_000u32;
        let n = piece_count(len);
        assert_eq!(n, 6);
        let mut next = 0;
        for i in 0..n {
            let r = piece_range(len, i);
            assert_eq!(r.start, next);
            next = r.end;
        }
        assert_eq!(next, len as usize);
        assert_eq!(piece_range(len, 5).len(), 96_000 - 5 * PIECE_SIZE);
        assert!(piece_range(len, 6).is_empty());
        assert!(piece_range(len, usize::MAX).is_empty());
    }

    #[test]
    fn every_piece_checks_and_one_changed_byte_names_its_piece() {
        let d = data(50_000);
        let m = Manifest::for_data(Seq(9), 1, 1_000_000, 1, &d);
        m.validate().unwrap();
        assert_eq!(m.piece_count(), 4);
        m.check_all(&d).unwrap();
        for i in 0..4 {
            m.check_piece(i, &d[piece_range(m.len, i)]).unwrap();
        }
        let mut bad = d.clone();
        bad[2 * PIECE_SIZE + 5] ^= 1;
        assert_eq!(m.check_all(&bad), Err(PieceError::BadHash { index: 2 }));
        assert_eq!(
            m.check_piece(2, &bad[piece_range(m.len, 2)]),
            Err(PieceError::BadHash { index: 2 })
        );
        // The right bytes under another index, a short piece, a piece past the end.
        assert!(m.check_piece(1, &d[piece_range(m.len, 0)]).is_err());
        assert!(matches!(
            m.check_piece(3, &d[..10]),
            Err(PieceError::PieceLength { .. })
        ));
        assert!(matches!(
            m.check_piece(4, &[]),
            Err(PieceError::NoSuchPiece { .. })
        ));
        assert!(m.check_all(&d[..49_999]).is_err());
    }

    #[test]
    fn bounds_are_checked_before_anything_is_hashed() {
        let d = data(40_000);
        let mut m = Manifest::for_data(Seq(1), 0, 1, 0, &d);
        m.hashes.pop();
        assert_eq!(
            m.validate(),
            Err(PieceError::HashCount {
                declared: 2,
                expected: 3
            })
        );
        let mut m = Manifest::for_data(Seq(1), 0, 1, 0, &d);
        m.len = MAX_SEGMENT_BYTES + 1;
        assert!(matches!(m.validate(), Err(PieceError::TooLong { .. })));
    }

    #[test]
    fn what_is_signed_covers_every_field_and_the_channel() {
        let d = data(20_000);
        let m = Manifest::for_data(Seq(3), 10, 1_000_000, 1, &d);
        let ch = ChannelId([5; 32]);
        let base = m.signed_bytes(&ch);
        let mut variants = Vec::new();
        let mut v = m.clone();
        v.seq = Seq(4);
        variants.push(v);
        let mut v = m.clone();
        v.origin_us += 1;
        variants.push(v);
        let mut v = m.clone();
        v.duration_us += 1;
        variants.push(v);
        let mut v = m.clone();
        v.flags ^= 2;
        variants.push(v);
        let mut v = m.clone();
        v.len -= 1;
        variants.push(v);
        let mut v = m.clone();
        v.hashes[1][0] ^= 1;
        variants.push(v);
        for v in variants {
            assert_ne!(v.signed_bytes(&ch), base, "{v:?}");
        }
        assert_ne!(m.signed_bytes(&ChannelId([6; 32])), base);
        // The signature is not part of what it signs.
        let mut v = m.clone();
        v.signature[0][0] = 1;
        assert_eq!(v.signed_bytes(&ch), base);
    }

    #[test]
    fn the_hash_list_costs_what_postcard_encodes() {
        for n in [0usize, 1, 6, 127, 128, MAX_PIECES] {
            let empty = Manifest::for_data(Seq(1), 0, 0, 0, &[]);
            let mut full = empty.clone();
            full.hashes = vec![[0; PIECE_HASH_LEN]; n];
            let a = postcard::to_allocvec(&empty).unwrap().len();
            let b = postcard::to_allocvec(&full).unwrap().len();
            assert_eq!(b - a, hashes_encoded_len(n), "{n}");
        }
        let mut m = Manifest::for_data(Seq(u32::MAX), u64::MAX, u32::MAX, u8::MAX, &[]);
        m.len = MAX_SEGMENT_BYTES;
        m.hashes = vec![[0xff; PIECE_HASH_LEN]; MAX_PIECES];
        assert!(postcard::to_allocvec(&m).unwrap().len() <= MAX_MANIFEST_LEN);
    }
}
