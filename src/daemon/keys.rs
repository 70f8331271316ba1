//! Channel keys and segment signatures.
//!
//! A channel id is its source's ed25519 public key. The source signs every segment over
//! `"coolstream-seg-v1" || channel || seq || origin_us || duration_us || flags || len ||
//! sha256(bytes)` (integers big-endian), so a relay can neither alter the media nor re-stamp
//! it. Peers verify in the link reader, before the core sees the segment; a bad one closes the
//! link it came on.
//!
//! A key file holds the 32-byte secret seed as 64 hex characters and a newline, mode 0600.

use crate::proto::wire::{ChannelId, Segment, SegmentBody, SharedBody, Signature};
use crate::proto::Seq;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

const DOMAIN: &[u8] = b"coolstream-seg-v1";

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

    /// Signs media bytes as segment `seq` of this channel and wraps them for the core.
    pub fn sign_segment(
        &self,
        seq: Seq,
        origin_us: u64,
        duration_us: u32,
        flags: u8,
        data: Vec<u8>,
    ) -> Segment<SharedBody> {
        let msg = signed_message(&self.channel(), seq, origin_us, duration_us, flags, &data);
        let sig = self.key.sign(&msg).to_bytes();
        let mut signature: Signature = [[0; 32]; 2];
        signature[0].copy_from_slice(&sig[..32]);
        signature[1].copy_from_slice(&sig[32..]);
        Segment {
            seq,
            origin_us,
            duration_us,
            flags,
            payload: Arc::new(SegmentBody { signature, data }),
        }
    }
}

/// What the source signs for a segment.
fn signed_message(
    channel: &ChannelId,
    seq: Seq,
    origin_us: u64,
    duration_us: u32,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 32 + 4 + 8 + 4 + 1 + 4 + 32);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&channel.0);
    m.extend_from_slice(&seq.0.to_be_bytes());
    m.extend_from_slice(&origin_us.to_be_bytes());
    m.extend_from_slice(&duration_us.to_be_bytes());
    m.push(flags);
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(&sha256(data));
    m
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(data));
    out
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

    /// Whether the source of this channel signed this segment as it is.
    pub fn verify(&self, seg: &Segment<SharedBody>) -> bool {
        let Some(key) = &self.key else {
            return false;
        };
        let msg = signed_message(
            &self.channel,
            seg.seq,
            seg.origin_us,
            seg.duration_us,
            seg.flags,
            &seg.payload.data,
        );
        let mut raw = [0u8; 64];
        raw[..32].copy_from_slice(&seg.payload.signature[0]);
        raw[32..].copy_from_slice(&seg.payload.signature[1]);
        let sig = ed25519_dalek::Signature::from_bytes(&raw);
        key.verify_strict(&msg, &sig).is_ok()
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
