//! Channel keys and segment signatures.
//!
//! A channel id is its source's ed25519 public key. The source signs every segment's manifest
//! ([`Manifest::signed_bytes`]: the channel, seq, origin_us, duration_us, flags, length and a
//! hash per piece), so a relay can neither alter a piece nor re-stamp a segment. Peers check
//! the manifest's signature and then every piece against its hash in the link reader, before
//! the core sees the segment; a bad manifest or a bad piece closes the link it came on.
//!
//! A key file holds the 32-byte secret seed as 64 hex characters and a newline, mode 0600.

use crate::proto::manifest::{Manifest, PieceError};
use crate::proto::wire::{ChannelId, Segment, SegmentBody, SharedBody, Signature};
use crate::proto::Seq;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Why a key could not be made, read or written.
#[derive(Debug)]
pub enum KeyError {
    Io(std::io::Error),
    /// The file is not 64 hex characters.
    Format,
    /// Refused to overwrite an existing key file.
    Exists,
    /// The operating system gave no randomness.
    Random,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Io(e) => write!(f, "{e}"),
            KeyError::Format => write!(f, "not a coolstream key file (64 hex characters)"),
            KeyError::Exists => write!(f, "file exists; not overwriting a key"),
            KeyError::Random => write!(f, "no randomness from the operating system"),
        }
    }
}
impl std::error::Error for KeyError {}

/// A source's signing key.
pub struct ChannelKey {
    key: SigningKey,
}

impl ChannelKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| KeyError::Random)?;
        Ok(ChannelKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        ChannelKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn channel(&self) -> ChannelId {
        ChannelId(self.key.verifying_key().to_bytes())
    }

    /// Writes the key to a new file readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::Exists
                } else {
                    KeyError::Io(e)
                }
            })?;
        let hex: String = self
            .key
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        writeln!(f, "{hex}").map_err(KeyError::Io)?;
        f.sync_all().map_err(KeyError::Io)
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(KeyError::Io)?;
        // The seed has the same form as a channel id: 64 hex characters.
        let seed = ChannelId::from_hex(text.trim()).ok_or(KeyError::Format)?;
        Ok(Self::from_seed(seed.0))
    }

    /// Cuts media bytes into pieces, signs their manifest as segment `seq` of this channel and
    /// wraps both for the core.
    pub fn sign_segment(
        &self,
        seq: Seq,
        origin_us: u64,
        duration_us: u32,
        flags: u8,
        data: Vec<u8>,
    ) -> Segment<SharedBody> {
        let manifest = Manifest::for_data(seq, origin_us, duration_us, flags, &data);
        let sig = self
            .key
            .sign(&manifest.signed_bytes(&self.channel()))
            .to_bytes();
        let mut signature: Signature = [[0; 32]; 2];
        signature[0].copy_from_slice(&sig[..32]);
        signature[1].copy_from_slice(&sig[32..]);
        Segment {
            seq,
            origin_us,
            duration_us,
            flags,
            payload: Arc::new(SegmentBody {
                hashes: manifest.hashes,
                signature,
                data,
                growing: None,
            }),
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(data));
    out
}

/// Why a segment did not verify.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VerifyError {
    /// The channel id is not a valid key: nothing verifies.
    NoKey,
    /// The manifest is out of bounds (checked before its signature).
    Manifest(PieceError),
    /// The source did not sign this manifest.
    Signature,
    /// A piece does not match the signed manifest.
    Piece(PieceError),
}

/// Checks segments against a channel's public key.
#[derive(Clone)]
pub struct Verifier {
    channel: ChannelId,
    key: Option<VerifyingKey>,
}

impl Verifier {
    /// A verifier for `channel`. A channel id that is not a valid curve point verifies nothing.
    pub fn new(channel: ChannelId) -> Self {
        Verifier {
            channel,
            key: VerifyingKey::from_bytes(&channel.0).ok(),
        }
    }

    /// Checks a manifest: its bounds, then the source's signature over it.
    pub fn check_manifest(&self, m: &Manifest) -> Result<(), VerifyError> {
        let key = self.key.as_ref().ok_or(VerifyError::NoKey)?;
        m.validate().map_err(VerifyError::Manifest)?;
        let mut raw = [0u8; 64];
        raw[..32].copy_from_slice(&m.signature[0]);
        raw[32..].copy_from_slice(&m.signature[1]);
        let sig = ed25519_dalek::Signature::from_bytes(&raw);
        key.verify_strict(&m.signed_bytes(&self.channel), &sig)
            .map_err(|_| VerifyError::Signature)
    }

    /// Checks a segment: its manifest, then every piece against it.
    pub fn check(&self, seg: &Segment<SharedBody>) -> Result<(), VerifyError> {
        let m = seg.header();
        self.check_manifest(&m)?;
        m.check_all(&seg.payload.data).map_err(VerifyError::Piece)
    }

    /// Whether the source of this channel signed this segment as it is.
    pub fn verify(&self, seg: &Segment<SharedBody>) -> bool {
        self.check(seg).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_segments_verify_and_tampering_is_caught() {
        let k = ChannelKey::from_seed([7; 32]);
        let v = Verifier::new(k.channel());
        let seg = k.sign_segment(Seq(5), 1234, 1_000_000, 1, vec![0x47; 188 * 10]);
        assert!(v.verify(&seg));
        let mut bad = seg.clone();
        bad.seq = Seq(6);
        assert!(!v.verify(&bad));
        let mut bad = seg.clone();
        bad.origin_us += 1;
        assert!(!v.verify(&bad));
        let mut body = (*seg.payload).clone();
        body.data[100] ^= 1;
        let bad = Segment {
            payload: Arc::new(body),
            ..seg.clone()
        };
        assert!(!v.verify(&bad));
        // Another channel's key does not verify it.
        let other = ChannelKey::from_seed([8; 32]);
        assert!(!Verifier::new(other.channel()).verify(&seg));
    }

    #[test]
    fn a_bad_piece_and_a_bad_manifest_are_told_apart() {
        use crate::proto::manifest::PIECE_SIZE;
        let k = ChannelKey::from_seed([7; 32]);
        let v = Verifier::new(k.channel());
        let seg = k.sign_segment(Seq(5), 1234, 1_000_000, 1, vec![0x47; 3 * PIECE_SIZE + 10]);
        assert_eq!(seg.payload.hashes.len(), 4);
        assert_eq!(v.check(&seg), Ok(()));
        // One byte of the third piece.
        let mut body = (*seg.payload).clone();
        body.data[2 * PIECE_SIZE + 1] ^= 1;
        let bad = Segment {
            payload: Arc::new(body),
            ..seg.clone()
        };
        assert_eq!(
            v.check(&bad),
            Err(VerifyError::Piece(PieceError::BadHash { index: 2 }))
        );
        // A hash in the manifest changed to match altered bytes: the signature no longer holds.
        let mut body = (*seg.payload).clone();
        body.data[2 * PIECE_SIZE + 1] ^= 1;
        body.hashes[2] =
            crate::proto::manifest::piece_hash(&body.data[2 * PIECE_SIZE..3 * PIECE_SIZE]);
        let bad = Segment {
            payload: Arc::new(body),
            ..seg.clone()
        };
        assert_eq!(v.check(&bad), Err(VerifyError::Signature));
        // A hash dropped: refused for its bounds before any signature work.
        let mut body = (*seg.payload).clone();
        body.hashes.pop();
        let bad = Segment {
            payload: Arc::new(body),
            ..seg.clone()
        };
        assert!(matches!(v.check(&bad), Err(VerifyError::Manifest(_))));
    }

    #[test]
    fn key_files_round_trip_with_owner_only_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("coolstream-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ch.key");
        let k = ChannelKey::generate().unwrap();
        k.save(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ChannelKey::load(&p).unwrap().channel(), k.channel());
        assert!(matches!(k.save(&p), Err(KeyError::Exists)));
        std::fs::write(dir.join("bad.key"), "nope\n").unwrap();
        assert!(matches!(
            ChannelKey::load(&dir.join("bad.key")),
            Err(KeyError::Format)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// The work of checking segments, for an instruction counter (run by hand under
    /// `valgrind --tool=callgrind`, see docs/SECURITY.md): 100 one-second segments of a
    /// 768 kbit/s stream (96,000 bytes, 6 pieces), each manifest and each piece checked.
    #[test]
    #[ignore]
    fn check_100_segments() {
        let k = ChannelKey::from_seed([7; 32]);
        let v = Verifier::new(k.channel());
        let segs: Vec<_> = (0..100u32)
            .map(|i| k.sign_segment(Seq(i), 0, 1_000_000, 1, vec![i as u8; 96_000]))
            .collect();
        for s in &segs {
            let m = s.header();
            v.check_manifest(&m).unwrap();
            for i in 0..m.piece_count() {
                let r = crate::proto::manifest::piece_range(m.len, i);
                m.check_piece(i, &s.payload.data[r]).unwrap();
            }
        }
    }
}
