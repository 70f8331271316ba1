//! Cuts a TS packet stream into segments on packet boundaries.
//!
//! Time is the stream's own: the PCR of the first PID seen carrying one (27 MHz, wrap-safe), or
//! the arrival time for a stream without PCR. A segment is cut when it has lasted the target
//! duration (`--segment-ms`, default 1000).
//!
//! **Where to cut** is the seam for keyframe-aligned segments ([`CutRule`]). Today's
//! [`CutRule::RandomAccess`] cuts, once three quarters of the target have passed, at a packet
//! the muxer marked as a random access point (adaptation field `random_access_indicator` on the
//! PCR PID, which is how ffmpeg and most encoders flag a keyframe), and at any packet once
//! twice the target has passed. A stream that never marks random access is cut on time alone.
//! Parsing H.264/HEVC NAL units for IDR/IRAP pictures belongs here later, for muxers that do
//! not mark them.
//!
//! Every segment starts with a copy of the latest PAT and PMT (when each fits one packet), so a
//! player can start at any segment that starts at a keyframe; such a segment is an *entry
//! point*.

use super::ts::{self, PACKET, PCR_HZ};
use crate::proto::wire::MAX_SEGMENT_BYTES;

/// PIDs below this carry tables (PAT, CAT, NIT, SDT, EIT, ...), not elementary streams.
const FIRST_ES_PID: u16 = 0x20;
/// A PCR step larger than this (or backwards) is a break in the stream, not elapsed time.
const MAX_PCR_STEP_US: u64 = 5_000_000;

/// A finished segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub data: Vec<u8>,
    pub duration_us: u32,
    /// Starts at a random access point, with PAT and PMT in front.
    pub entry_point: bool,
    /// Follows a break in the input (a loop, a PCR jump).
    pub discontinuity: bool,
}

/// Where segments may end (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CutRule {
    /// Every target duration, at whatever packet comes.
    Time,
    /// At random access points near the target duration; on time if the stream marks none.
    RandomAccess,
}

pub struct Segmenter {
    target_us: u64,
    rule: CutRule,
    cur: Vec<u8>,
    cur_start_us: u64,
    /// The segment has PAT and PMT at its head (copies, or its own).
    cur_psi: bool,
    /// Whether it is an entry point, decided at its first packet that is not PSI.
    cur_entry: Option<bool>,
    /// Its own PAT came before its first elementary stream packet.
    cur_pat: bool,
    cur_discontinuity: bool,
    /// Stream time in µs: PCR-driven once a PCR PID is known.
    stream_us: u64,
    pcr_pid: Option<u16>,
    last_pcr: Option<u64>,
    /// Arrival time of the last packet, for streams without PCR.
    last_arrival_us: Option<u64>,
    rai_seen: bool,
    pat: Option<[u8; PACKET]>,
    pmt_pid: Option<u16>,
    pmt: Option<[u8; PACKET]>,
    break_pending: bool,
}

impl Segmenter {
    pub fn new(target_ms: u64, rule: CutRule) -> Self {
        Segmenter {
            target_us: target_ms.clamp(100, 10_000) * 1000,
            rule,
            cur: Vec::new(),
            cur_start_us: 0,
            cur_psi: false,
            cur_entry: None,
            cur_pat: false,
            cur_discontinuity: false,
            stream_us: 0,
            pcr_pid: None,
            last_pcr: None,
            last_arrival_us: None,
            rai_seen: false,
            pat: None,
            pmt_pid: None,
            pmt: None,
            break_pending: false,
        }
    }

    /// The input broke (looped, restarted): the next packet starts a new segment, flagged.
    pub fn mark_discontinuity(&mut self) {
        self.break_pending = true;
        self.last_pcr = None;
        self.last_arrival_us = None;
    }

    /// Moves stream time for this packet; returns true if the stream jumped.
    fn advance_clock(&mut self, p: &[u8], arrival_us: u64) -> bool {
        let pid = ts::pid(p);
        if let Some(pcr) = ts::pcr(p) {
            if self.pcr_pid.is_none() {
                self.pcr_pid = Some(pid);
            }
            if self.pcr_pid == Some(pid) {
                let jumped = match self.last_pcr {
                    Some(last) => {
                        let d = ts::pcr_delta(last, pcr) * 1_000_000 / PCR_HZ;
                        if d > MAX_PCR_STEP_US {
                            true
                        } else {
                            self.stream_us += d;
                            false
                        }
                    }
                    None => false,
                };
                self.last_pcr = Some(pcr);
                return jumped;
            }
        }
        if self.pcr_pid.is_none() {
            if let Some(last) = self.last_arrival_us {
                self.stream_us += arrival_us.saturating_sub(last).min(MAX_PCR_STEP_US);
            }
            self.last_arrival_us = Some(arrival_us);
        }
        false
    }

    fn note_psi(&mut self, p: &[u8; PACKET]) {
        let pid = ts::pid(p);
        if !ts::payload_unit_start(p) {
            return;
        }
        if pid == 0 {
            if let Some(pmt) = ts::pat_first_pmt(p) {
                self.pat = Some(*p);
                self.pmt_pid = Some(pmt);
            }
        } else if Some(pid) == self.pmt_pid && section_fits(p) {
            self.pmt = Some(*p);
        }
    }

    fn is_cut_point(&self, p: &[u8], elapsed: u64) -> bool {
        let random_access = self.rai_seen && self.rule == CutRule::RandomAccess;
        if !random_access {
            return elapsed >= self.target_us;
        }
        let at_rap = ts::random_access(p) && Some(ts::pid(p)) == self.pcr_pid;
        (at_rap && elapsed >= self.target_us * 3 / 4) || elapsed >= self.target_us * 2
    }

    /// Adds one aligned packet that arrived at `arrival_us` (any monotonic µs); returns the
    /// segment it completed, if any.
    pub fn push(&mut self, p: &[u8; PACKET], arrival_us: u64) -> Option<Cut> {
        let jumped = self.advance_clock(p, arrival_us);
        if ts::random_access(p) && Some(ts::pid(p)) == self.pcr_pid {
            self.rai_seen = true;
        }
        self.note_psi(p);
        let elapsed = self.stream_us.saturating_sub(self.cur_start_us);
        let full = self.cur.len() + 3 * PACKET > MAX_SEGMENT_BYTES as usize;
        let cut = !self.cur.is_empty()
            && (jumped || self.break_pending || full || self.is_cut_point(p, elapsed));
        let done = if cut {
            Some(self.finish(elapsed))
        } else {
            None
        };
        if self.cur.is_empty() {
            self.start(p, jumped);
        }
        let pid = ts::pid(p);
        if self.cur_entry.is_none() {
            if pid == 0 {
                self.cur_pat = true;
            } else if Some(pid) == self.pmt_pid {
                self.cur_psi |= self.cur_pat;
            } else if pid >= FIRST_ES_PID {
                self.cur_entry =
                    Some(self.cur_psi && ts::random_access(p) && Some(pid) == self.pcr_pid);
            }
        }
        self.cur.extend_from_slice(p);
        done
    }

    fn start(&mut self, p: &[u8; PACKET], jumped: bool) {
        self.cur_start_us = self.stream_us;
        self.cur_discontinuity = jumped || self.break_pending;
        self.break_pending = false;
        // PAT and PMT in front, unless the segment begins with its own.
        self.cur_psi = false;
        self.cur_pat = false;
        if ts::pid(p) != 0 {
            if let (Some(pat), Some(pmt)) = (self.pat, self.pmt) {
                self.cur.extend_from_slice(&pat);
                self.cur.extend_from_slice(&pmt);
                self.cur_psi = true;
            }
        }
        self.cur_entry = None;
    }

    fn finish(&mut self, elapsed: u64) -> Cut {
        // A duration the clock cannot vouch for (a jump, a stream without time) is nominal.
        let duration_us = if elapsed == 0 || elapsed > self.target_us * 4 {
            self.target_us
        } else {
            elapsed
        };
        Cut {
            data: std::mem::take(&mut self.cur),
            duration_us: duration_us as u32,
            entry_point: self.cur_entry.unwrap_or(false),
            discontinuity: self.cur_discontinuity,
        }
    }

    /// The segment in progress, cut now (at the end of a finite input).
    pub fn flush(&mut self) -> Option<Cut> {
        if self.cur.is_empty() {
            return None;
        }
        let elapsed = self.stream_us.saturating_sub(self.cur_start_us);
        Some(self.finish(elapsed))
    }
}

/// Whether the PSI section starting in this packet ends in it.
fn section_fits(p: &[u8; PACKET]) -> bool {
    let afc = (p[3] >> 4) & 3;
    let mut i = 4;
    if afc & 2 != 0 {
        i += 1 + p[4] as usize;
    }
    if afc & 1 == 0 || i >= PACKET {
        return false;
    }
    let ptr = p[i] as usize;
    let s = i + 1 + ptr;
    if s + 3 > PACKET {
        return false;
    }
    let len = (((p[s + 1] & 0x0f) as usize) << 8) | p[s + 2] as usize;
    s + 3 + len <= PACKET
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ts::{packet_with_pcr, SYNC};

    fn es(pid: u16) -> [u8; PACKET] {
        let mut p = [0u8; PACKET];
        p[..4].copy_from_slice(&[SYNC, (pid >> 8) as u8, pid as u8, 0x10]);
        p
    }

    fn pat() -> [u8; PACKET] {
        let mut p = [0xffu8; PACKET];
        p[..4].copy_from_slice(&[SYNC, 0x40, 0x00, 0x10]);
        let sec = [
            0, 0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00, 1, 2, 3, 4,
        ];
        p[4..4 + sec.len()].copy_from_slice(&sec);
        p
    }

    fn pmt() -> [u8; PACKET] {
        let mut p = [0xffu8; PACKET];
        p[..4].copy_from_slice(&[SYNC, 0x50, 0x00, 0x10]);
        let sec = [
            0, 0x02, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0xe1, 0, 0xf0, 0, 1, 2, 3, 4,
        ];
        p[4..4 + sec.len()].copy_from_slice(&sec);
        p
    }

    /// 10 s of a stream: PCR on PID 256 every 40 ms, a keyframe (RAI) every `gop` frames.
    fn stream(gop: u64, rai: bool) -> Vec<[u8; PACKET]> {
        let mut v = vec![pat(), pmt()];
        for f in 0..250u64 {
            if f % 10 == 0 {
                v.push(pat());
                v.push(pmt());
            }
            let pcr = 27_000_000 + f * 40 * 27_000;
            v.push(packet_with_pcr(256, pcr, rai && f % gop == 0));
            for _ in 0..5 {
                v.push(es(256));
            }
            v.push(es(257));
        }
        v
    }

    fn run(seg: &mut Segmenter, pkts: &[[u8; PACKET]]) -> Vec<Cut> {
        pkts.iter()
            .enumerate()
            .filter_map(|(i, p)| seg.push(p, i as u64))
            .collect()
    }

    #[test]
    fn cuts_at_keyframes_near_the_target_with_psi_in_front() {
        let mut s = Segmenter::new(1000, CutRule::RandomAccess);
        let cuts = run(&mut s, &stream(25, true));
        assert_eq!(cuts.len(), 9);
        for c in &cuts[1..] {
            assert_eq!(c.duration_us, 1_000_000);
            assert!(c.entry_point);
            assert_eq!(c.data.len() % PACKET, 0);
            assert_eq!(&c.data[..PACKET], &pat()[..]);
            assert_eq!(&c.data[PACKET..2 * PACKET], &pmt()[..]);
            assert!(ts::random_access(&c.data[2 * PACKET..3 * PACKET]));
        }
        // Keyframes every 1.6 s: cut at each one (past 3/4 of the target).
        let mut s = Segmenter::new(1000, CutRule::RandomAccess);
        let cuts = run(&mut s, &stream(40, true));
        assert!(cuts[1..].iter().all(|c| c.duration_us == 1_600_000));
    }

    /// Random packets (sync byte, any header, any adaptation field length) through every
    /// parser and the segmenter: no panic, segments stay whole packets and within the cap.
    #[test]
    fn garbage_packets_never_panic() {
        let mut rng = crate::proto::rng::Rng::new(11);
        let mut s = Segmenter::new(200, CutRule::RandomAccess);
        for i in 0..200_000u64 {
            let mut p = [0u8; PACKET];
            for b in p.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            p[0] = SYNC;
            if i % 3 == 0 {
                p[1] &= 0xe0; // PID 0: PAT parsing
            }
            let _ = ts::pes_timestamps(&p);
            let _ = ts::pat_first_pmt(&p);
            let _ = section_fits(&p);
            ts::restamp(&mut p, rng.next_u64());
            if let Some(c) = s.push(&p, i * 100) {
                assert_eq!(c.data.len() % PACKET, 0);
                assert!(c.data.len() <= MAX_SEGMENT_BYTES as usize);
            }
        }
    }

    #[test]
    fn cuts_on_time_without_random_access_marks_and_after_a_break() {
        let mut s = Segmenter::new(500, CutRule::RandomAccess);
        let cuts = run(&mut s, &stream(25, false));
        assert!(cuts.len() >= 19);
        assert!(
            cuts[1..].iter().all(|c| c.duration_us == 520_000
                || c.duration_us == 480_000
                || c.duration_us == 500_000),
            "{:?}",
            cuts.iter().map(|c| c.duration_us).collect::<Vec<_>>()
        );
        assert!(cuts.iter().all(|c| !c.entry_point));
        // A loop: PCR goes back; the next segment is flagged.
        let mut s = Segmenter::new(1000, CutRule::Time);
        let pk = stream(25, true);
        let mut cuts = run(&mut s, &pk[..800]);
        s.mark_discontinuity();
        cuts.extend(run(&mut s, &pk));
        let flagged: Vec<_> = cuts.iter().filter(|c| c.discontinuity).collect();
        assert_eq!(flagged.len(), 1);
        assert!(cuts
            .iter()
            .all(|c| c.duration_us > 0 && c.duration_us <= 1_100_000));
    }
}
