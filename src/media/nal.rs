//! Keyframe detection in H.264 and HEVC elementary streams.
//!
//! Owns one question: does the access unit starting at this video PES begin a picture a
//! decoder can start from? The answer is the type of the first picture (VCL) NAL unit after
//! the PES header: H.264 IDR (type 5) or HEVC IRAP (types 16-21: BLA, IDR, CRA) says yes, any
//! other picture says no. Parameter sets, SEI and delimiters before it are skipped. The scan
//! is incremental over the PES's packets and gives up (no answer) after [`SCAN_LIMIT`] bytes,
//! so a stream without start codes costs a bounded amount of work.

/// Bytes of one access unit scanned at most for its first picture (encoders put parameter sets
/// and SEI first; x265's first SEI alone is a couple of KiB).
pub const SCAN_LIMIT: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    H264,
    Hevc,
}

/// Incremental scan of one access unit.
#[derive(Clone, Debug)]
pub struct RapScan {
    codec: Codec,
    /// The last bytes of the previous chunk (a start code may straddle packets).
    tail: [u8; 3],
    tail_len: usize,
    scanned: usize,
}

impl RapScan {
    pub fn new(codec: Codec) -> Self {
        RapScan {
            codec,
            tail: [0; 3],
            tail_len: 0,
            scanned: 0,
        }
    }

    /// Feeds the next elementary-stream bytes. `Some(true)`: a keyframe; `Some(false)`: a
    /// picture that is not one; `None`: not known yet (feed more), or [`RapScan::gave_up`].
    pub fn push(&mut self, data: &[u8]) -> Option<bool> {
        if self.gave_up() {
            return None;
        }
        // A start code straddling the previous chunk: the carried tail and our first bytes.
        let mut join = [0u8; 7];
        let k = data.len().min(4);
        join[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        join[self.tail_len..self.tail_len + k].copy_from_slice(&data[..k]);
        if let Some(v) = self.scan(&join[..self.tail_len + k]) {
            return Some(v);
        }
        if let Some(v) = self.scan(data) {
            return Some(v);
        }
        self.scanned += data.len();
        // Carry the last three bytes (of the join, when the chunk is that short).
        let all = &join[..self.tail_len + k];
        let src: &[u8] = if data.len() >= 3 { data } else { all };
        let n = src.len().min(3);
        self.tail[..n].copy_from_slice(&src[src.len() - n..]);
        self.tail_len = n;
        None
    }

    /// Whether the scan passed its limit without finding a picture.
    pub fn gave_up(&self) -> bool {
        self.scanned > SCAN_LIMIT
    }

    fn scan(&self, b: &[u8]) -> Option<bool> {
        let mut i = 0;
        while i + 3 < b.len() {
            if b[i] == 0 && b[i + 1] == 0 && b[i + 2] == 1 {
                let h = b[i + 3];
                match self.codec {
                    Codec::H264 => {
                        let t = h & 0x1f;
                        if (1..=5).contains(&t) {
                            return Some(t == 5);
                        }
                    }
                    Codec::Hevc => {
                        let t = (h >> 1) & 0x3f;
                        if t < 32 {
                            return Some((16..=21).contains(&t));
                        }
                    }
                }
                i += 3;
            } else {
                i += 1;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_picture_after_parameter_sets() {
        // H.264: AUD, SPS, PPS, then an IDR slice.
        let au = [
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 1, 2, 3, 0, 0, 1, 0x68, 4, 0, 0, 1, 0x65, 9,
        ];
        assert_eq!(RapScan::new(Codec::H264).push(&au), Some(true));
        // A P slice.
        assert_eq!(
            RapScan::new(Codec::H264).push(&[0, 0, 1, 0x09, 0x30, 0, 0, 1, 0x41, 7]),
            Some(false)
        );
        // HEVC: AUD (35), VPS (32), then CRA (21) / TRAIL_R (1); each split over chunks.
        let cra = [
            0,
            0,
            1,
            35 << 1,
            1,
            0x50,
            0,
            0,
            1,
            32 << 1,
            1,
            0,
            0,
            1,
            21 << 1,
            1,
        ];
        let trail = [0, 0, 1, 35 << 1, 1, 0x50, 0, 0, 1, 1 << 1, 1, 0];
        for split in 1..cra.len() {
            let mut s = RapScan::new(Codec::Hevc);
            let a = s.push(&cra[..split]);
            let r = a.or_else(|| s.push(&cra[split..]));
            assert_eq!(r, Some(true), "{split}");
        }
        assert_eq!(RapScan::new(Codec::Hevc).push(&trail), Some(false));
    }

    #[test]
    fn gives_up_on_streams_without_pictures() {
        let mut s = RapScan::new(Codec::H264);
        let junk = [0x11u8; 184];
        let mut n = 0;
        while !s.gave_up() {
            assert_eq!(s.push(&junk), None);
            n += 1;
        }
        assert!(n * 184 > SCAN_LIMIT);
        assert_eq!(s.push(&[0, 0, 1, 0x65]), None);
    }
}
