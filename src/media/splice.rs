//! The stream one player gets, spliced from segments so that a decoder never sees an error.
//!
//! Owns, per output (an HTTP client, a UDP sender): where the player starts, what happens at a
//! missing segment or a channel change, and the continuity counters the player sees.
//!
//! - **Start**: segments are skipped until an entry point (PAT, PMT, keyframe), at most
//!   [`MAX_ENTRY_WAIT`] of them (a stream with no marked keyframes starts anyway).
//! - **Whole PES only across a break**: the end of each segment (from the earliest last PES
//!   start among its elementary streams, within [`HOLD_MAX`] packets of the end) is held back
//!   until the next segment comes. When that segment follows on, the held bytes go out first,
//!   untouched. When a segment is missing (a gap), or the input broke, or the channel changes,
//!   the PES each stream had started in the held bytes is dropped, and in the next segment
//!   each stream's packets are dropped up to its first PES start: the decoder only ever gets
//!   whole PES packets.
//! - **Discontinuity signalled**: after such a break every elementary stream first gets an
//!   adaptation-field-only packet with `discontinuity_indicator` set, whose continuity counter
//!   leads into the stream's next packet, so counters are consistent everywhere and the jump
//!   (clock and counters) is announced where it happens.
//! - **Tables' counters kept continuous**: PAT, PMT and SDT packets pass unchanged until the
//!   first break (the segmenter's copies in front of each segment either repeat the last
//!   table packet, a legal duplicate, or continue the table's counter); from a break on,
//!   their counters are shifted to continue this output's own sequence. After a channel
//!   change their version numbers also move on (and CRCs are recomputed; one-packet sections
//!   only) so a decoder reads the new tables. A continuous stream therefore reaches the
//!   player byte for byte as the source cut it.
//!
//! The splicer holds at most [`HOLD_MAX`] packets and a table of [`MAX_PIDS`] PIDs.

use super::psi;
use super::ts::{self, PACKET};

/// Segments a new player waits for an entry point before it starts anyway.
pub const MAX_ENTRY_WAIT: u32 = 3;
/// Packets at the end of a segment held back at most (about 94 KiB).
pub const HOLD_MAX: usize = 512;
/// Elementary streams tracked per output; further PIDs pass through untracked.
pub const MAX_PIDS: usize = 32;

#[derive(Clone, Copy, Debug)]
struct TableCc {
    pid: u16,
    /// Counters of the last packet taken in and sent out.
    last_in: u8,
    last_out: u8,
    shift: u8,
    realign: bool,
}

#[derive(Clone, Copy, Debug)]
struct PidState {
    pid: u16,
    /// Counter of the last packet sent on this PID.
    last_cc: Option<u8>,
    /// Waiting for a PES start after a break (packets before it are dropped).
    resync: bool,
}

/// What became of a segment given to [`Splicer::segment`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Written out (its tail may be held until the next one).
    Sent,
    /// Skipped: the player waits for an entry point.
    Skipped,
}

#[derive(Debug)]
pub struct Splicer {
    pids: Vec<PidState>,
    /// Tables' PIDs, the counter last sent, the shift applied, and whether the shift must be
    /// set again (after a break).
    tables: Vec<TableCc>,
    pmt_pid: Option<u16>,
    held: Vec<u8>,
    waiting: bool,
    waited: u32,
    /// A break happened: the next segment starts with discontinuity packets.
    broken: bool,
    /// Added to table version numbers (moves on with each channel change).
    version_shift: u8,
    /// Segments skipped waiting for an entry point, packets dropped to whole-PES boundaries.
    pub skipped_segments: u64,
    pub dropped_packets: u64,
}

impl Default for Splicer {
    fn default() -> Self {
        Self::new()
    }
}

impl Splicer {
    pub fn new() -> Self {
        Splicer {
            pids: Vec::new(),
            tables: Vec::new(),
            pmt_pid: None,
            held: Vec::new(),
            waiting: true,
            waited: 0,
            broken: false,
            version_shift: 0,
            skipped_segments: 0,
            dropped_packets: 0,
        }
    }

    /// Whether the player is still waiting for an entry point.
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// A segment is missing (or the player skipped ahead): what was held is cut to whole PES,
    /// and the player resumes at the next entry point with the discontinuity signalled.
    pub fn gap(&mut self, out: &mut Vec<u8>) {
        self.release_held_whole(out);
        self.break_tables();
        self.broken = true;
        self.waiting = true;
        self.waited = 0;
    }

    /// The output now plays another channel: a break, and the new channel's tables get new
    /// version numbers so a decoder rereads them.
    pub fn change_channel(&mut self, out: &mut Vec<u8>) {
        self.gap(out);
        self.version_shift = self.version_shift.wrapping_add(1);
        self.pmt_pid = None;
    }

    /// Adds one segment (whole TS packets) to the player's stream in `out`.
    /// `entry`: it is an entry point; `discontinuity`: the source's input broke before it.
    pub fn segment(
        &mut self,
        data: &[u8],
        entry: bool,
        discontinuity: bool,
        out: &mut Vec<u8>,
    ) -> Taken {
        if self.waiting {
            if !entry && self.waited < MAX_ENTRY_WAIT {
                self.waited += 1;
                self.skipped_segments += 1;
                return Taken::Skipped;
            }
            self.waiting = false;
        }
        if discontinuity && !self.broken {
            self.release_held_whole(out);
            self.break_tables();
            self.broken = true;
        }
        if self.broken {
            self.begin_after_break(data, out);
            self.broken = false;
        } else {
            let held = std::mem::take(&mut self.held);
            for p in held.chunks_exact(PACKET) {
                self.emit(p, out);
            }
            let keep = self.tail_start(data);
            for p in data[..keep].chunks_exact(PACKET) {
                self.emit(p, out);
            }
            self.held.extend_from_slice(&data[keep..]);
        }
        Taken::Sent
    }

    /// Where this segment's held tail starts (a packet boundary): the earliest of the last
    /// PES starts of its elementary streams, looking back at most [`HOLD_MAX`] packets.
    fn tail_start(&self, data: &[u8]) -> usize {
        let n = data.len() / PACKET;
        let from = n.saturating_sub(HOLD_MAX);
        let mut last: Vec<(u16, usize)> = Vec::new();
        for i in from..n {
            let p = &data[i * PACKET..(i + 1) * PACKET];
            let pid = ts::pid(p);
            if ts::payload_unit_start(p) && self.is_es(pid) {
                if let Some(e) = last.iter_mut().find(|(q, _)| *q == pid) {
                    e.1 = i;
                } else if last.len() < MAX_PIDS {
                    last.push((pid, i));
                }
            }
        }
        last.iter().map(|&(_, i)| i).min().unwrap_or(n) * PACKET
    }

    fn is_es(&self, pid: u16) -> bool {
        pid >= 0x20 && pid != ts::NULL_PID && Some(pid) != self.pmt_pid
    }

    /// Sends what was held, minus each stream's PES that the missing data would have ended.
    fn release_held_whole(&mut self, out: &mut Vec<u8>) {
        let held = std::mem::take(&mut self.held);
        let mut last_start: Vec<(u16, usize)> = Vec::new();
        for (i, p) in held.chunks_exact(PACKET).enumerate() {
            let pid = ts::pid(p);
            if ts::payload_unit_start(p) && self.is_es(pid) {
                match last_start.iter_mut().find(|(q, _)| *q == pid) {
                    Some(e) => e.1 = i,
                    None => last_start.push((pid, i)),
                }
            }
        }
        for (i, p) in held.chunks_exact(PACKET).enumerate() {
            let pid = ts::pid(p);
            let cut = last_start.iter().any(|&(q, s)| q == pid && i >= s);
            if cut {
                self.dropped_packets += 1;
            } else {
                self.emit(p, out);
            }
        }
    }

    /// The first segment after a break: discontinuity packets, then each stream from its first
    /// PES start.
    fn begin_after_break(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.held.clear();
        // Tables first (the PMT PID must be known to tell streams from tables).
        for p in data.chunks_exact(PACKET) {
            if ts::pid(p) == psi::PAT_PID {
                self.note_pat(p);
            }
        }
        for st in self.pids.iter_mut() {
            st.resync = true;
        }
        let keep = self.tail_start(data);
        let mut announced: Vec<u16> = Vec::new();
        for (i, p) in data.chunks_exact(PACKET).enumerate() {
            let pid = ts::pid(p);
            if i * PACKET >= keep {
                // Held for the next segment, resync state and all.
                self.held.extend_from_slice(p);
                continue;
            }
            if !self.is_es(pid) {
                self.emit(p, out);
                continue;
            }
            let start = ts::payload_unit_start(p);
            let st = self.pid_state(pid);
            let resync = st.map_or(!start, |s| s.resync);
            if resync && !start {
                self.dropped_packets += 1;
                continue;
            }
            if !announced.contains(&pid) {
                announced.push(pid);
                // The counter the stream's previous packet would have had.
                let lead = if ts::has_payload(p) {
                    ts::cc(p).wrapping_sub(1) & 0x0f
                } else {
                    ts::cc(p)
                };
                out.extend_from_slice(&ts::discontinuity_packet(pid, lead));
            }
            if let Some(st) = self.pid_state_mut(pid) {
                st.resync = false;
            }
            self.emit(p, out);
        }
        // Streams whose first PES start lies in the held tail stay in resync there; the held
        // bytes go out with the next segment, which is contiguous.
        let held = std::mem::take(&mut self.held);
        let mut clean = Vec::with_capacity(held.len());
        for p in held.chunks_exact(PACKET) {
            let pid = ts::pid(p);
            let waiting = self.is_es(pid)
                && !announced.contains(&pid)
                && self.pid_state(pid).is_none_or(|s| s.resync);
            if waiting && !ts::payload_unit_start(p) {
                self.dropped_packets += 1;
                continue;
            }
            if waiting {
                announced.push(pid);
                let lead = ts::cc(p).wrapping_sub(1) & 0x0f;
                clean.extend_from_slice(&ts::discontinuity_packet(pid, lead));
                if let Some(st) = self.pid_state_mut(pid) {
                    st.resync = false;
                }
            }
            clean.extend_from_slice(p);
        }
        self.held = clean;
    }

    /// Packets this splicer wrote out that will not be sent after all (an output dropping the
    /// rest of a channel it leaves): the tables' counters go back to before them.
    pub fn unsent(&mut self, data: &[u8]) {
        for t in self.tables.iter_mut() {
            let first = data
                .chunks_exact(PACKET)
                .find(|p| ts::pid(p) == t.pid && ts::has_payload(p));
            if let Some(p) = first {
                t.last_out = ts::cc(p).wrapping_sub(1) & 0x0f;
            }
        }
    }

    fn break_tables(&mut self) {
        for t in self.tables.iter_mut() {
            t.realign = true;
        }
    }

    fn pid_state(&self, pid: u16) -> Option<&PidState> {
        self.pids.iter().find(|s| s.pid == pid)
    }

    fn pid_state_mut(&mut self, pid: u16) -> Option<&mut PidState> {
        self.pids.iter_mut().find(|s| s.pid == pid)
    }

    fn note_pat(&mut self, p: &[u8]) {
        if let Some(pmt) = ts::pat_first_pmt(p) {
            self.pmt_pid = Some(pmt);
        }
    }

    /// Writes one packet: tables renumbered (and re-versioned after a channel change),
    /// elementary streams' counters noted.
    fn emit(&mut self, p: &[u8], out: &mut Vec<u8>) {
        let pid = ts::pid(p);
        if pid == psi::PAT_PID {
            self.note_pat(p);
        }
        let table = pid == psi::PAT_PID || pid == psi::SDT_PID || Some(pid) == self.pmt_pid;
        if table {
            let at = out.len();
            out.extend_from_slice(p);
            let q = &mut out[at..at + PACKET];
            let cc = ts::cc(q);
            let k = match self.tables.iter().position(|t| t.pid == pid) {
                Some(k) => k,
                None => {
                    let prev = cc.wrapping_sub(1) & 0x0f;
                    self.tables.push(TableCc {
                        pid,
                        last_in: prev,
                        last_out: prev,
                        shift: 0,
                        realign: false,
                    });
                    self.tables.len() - 1
                }
            };
            let t = &mut self.tables[k];
            if ts::has_payload(q) {
                // After a break, or where the input's own counter jumps (a looped file's
                // tables restart behind the copies in front): continue our sequence.
                let follows = cc == t.last_in || cc == (t.last_in + 1) & 0x0f;
                if t.realign || !follows {
                    t.shift = (t.last_out + 1).wrapping_sub(cc) & 0x0f;
                    t.realign = false;
                }
                t.last_in = cc;
            }
            let out_cc = (cc + t.shift) & 0x0f;
            ts::set_cc(q, out_cc);
            t.last_out = out_cc;
            if self.version_shift != 0 {
                shift_version(q, self.version_shift);
            }
            return;
        }
        if self.is_es(pid) {
            if let Some(st) = self.pid_state_mut(pid) {
                st.last_cc = Some(ts::cc(p));
            } else if self.pids.len() < MAX_PIDS {
                self.pids.push(PidState {
                    pid,
                    last_cc: Some(ts::cc(p)),
                    resync: false,
                });
            }
        }
        out.extend_from_slice(p);
    }
}

/// Moves the version number of a one-packet PSI section on by `by` (mod 32) and rewrites its
/// CRC; other packets are left alone.
fn shift_version(p: &mut [u8], by: u8) {
    if !ts::payload_unit_start(p) {
        return;
    }
    let afc = (p[3] >> 4) & 3;
    let mut i = 4;
    if afc & 2 != 0 {
        i += 1 + p[4] as usize;
    }
    if afc & 1 == 0 || i >= PACKET {
        return;
    }
    let s = i + 1 + p[i] as usize;
    if s + 8 > PACKET {
        return;
    }
    let len = (((p[s + 1] & 0x0f) as usize) << 8) | p[s + 2] as usize;
    let end = s + 3 + len;
    if len < 9 || end > PACKET || p[s + 1] & 0x80 == 0 || psi::crc32(&p[s..end]) != 0 {
        return;
    }
    let v = ((p[s + 5] >> 1) & 0x1f).wrapping_add(by) & 0x1f;
    p[s + 5] = (p[s + 5] & 0xc1) | (v << 1);
    let crc = psi::crc32(&p[s..end - 4]);
    p[end - 4..end].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::tr101290::Checker;
    use crate::media::ts::SYNC;

    fn pkt(pid: u16, cc: u8, start: bool) -> [u8; PACKET] {
        let mut p = [0u8; PACKET];
        p[0] = SYNC;
        p[1] = (pid >> 8) as u8 & 0x1f | if start { 0x40 } else { 0 };
        p[2] = pid as u8;
        p[3] = 0x10 | cc;
        if start {
            p[4..10].copy_from_slice(&[0, 0, 1, 0xe0, 0, 0]);
        }
        p
    }

    fn pat(cc: u8) -> [u8; PACKET] {
        let mut sec = vec![0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00];
        let crc = psi::crc32(&sec);
        sec.extend_from_slice(&crc.to_be_bytes());
        let mut p = [0xffu8; PACKET];
        p[..5].copy_from_slice(&[SYNC, 0x40, 0, 0x10 | cc, 0]);
        p[5..5 + sec.len()].copy_from_slice(&sec);
        p
    }

    /// Segment `k` of a stream: PAT copy, then video (PES of 4 packets) and audio (PES of 3)
    /// interleaved, the streams' counters continuing from segment to segment. Audio PES
    /// straddle segment ends.
    fn segment(k: u32) -> Vec<u8> {
        // The copy in front repeats the previous segment's last PAT (a legal duplicate).
        let mut v = pat(k.wrapping_sub(1) as u8 & 0x0f).to_vec();
        for i in 0..40u32 {
            let n = k * 40 + i;
            v.extend_from_slice(&pkt(0x100, (n & 0x0f) as u8, i % 4 == 0));
            v.extend_from_slice(&pkt(0x101, (n & 0x0f) as u8, (n + 1) % 3 == 0));
            if i == 38 {
                // A table repeated in the tail (held back with it): its counter is ours too.
                v.extend_from_slice(&pat(k as u8 & 0x0f));
            }
        }
        v
    }

    fn pids_and_starts(out: &[u8], pid: u16) -> Vec<(bool, bool)> {
        out.chunks(PACKET)
            .filter(|p| ts::pid(p) == pid)
            .map(|p| (ts::payload_unit_start(p), ts::discontinuity(p)))
            .collect()
    }

    #[test]
    fn a_continuous_stream_passes_through_byte_for_byte() {
        let mut s = Splicer::new();
        let mut out = Vec::new();
        let mut all = Vec::new();
        for k in 0..5 {
            let seg = segment(k);
            all.extend_from_slice(&seg);
            assert_eq!(s.segment(&seg, true, false, &mut out), Taken::Sent);
        }
        // All but the held tail went out, in order, untouched.
        assert_eq!(out.len() + s.held.len(), all.len());
        assert!(all.starts_with(&out));
        let mut c = Checker::new();
        c.push_bytes(&out, 0);
        assert_eq!(c.report().errors(), 0, "{:?}", c.report());
    }

    #[test]
    fn a_gap_leaves_whole_pes_and_a_signalled_discontinuity() {
        let mut s = Splicer::new();
        let mut out = Vec::new();
        s.segment(&segment(0), true, false, &mut out);
        s.segment(&segment(1), true, false, &mut out);
        s.gap(&mut out);
        // Not an entry point: skipped while waiting.
        assert_eq!(
            s.segment(&segment(3), false, false, &mut out),
            Taken::Skipped
        );
        s.segment(&segment(4), true, false, &mut out);
        s.segment(&segment(5), true, false, &mut out);
        let mut c = Checker::new();
        c.push_bytes(&out, 0);
        let r = c.report();
        assert_eq!(r.errors(), 0, "{r:?}");
        assert_eq!(r.discontinuities, 2, "one per elementary stream");
        // Audio: every PES sent is whole. Before the break, the last audio PES start is
        // followed by exactly its other two packets; after, audio resumes at a PES start.
        let audio = pids_and_starts(&out, 0x101);
        let brk = audio.iter().position(|&(_, d)| d).unwrap();
        assert!(audio[..brk].ends_with(&[(true, false), (false, false), (false, false)]));
        assert_eq!(audio[brk + 1], (true, false));
        let video = pids_and_starts(&out, 0x100);
        let brk = video.iter().position(|&(_, d)| d).unwrap();
        assert_eq!(video[brk + 1], (true, false));
        assert!(s.dropped_packets > 0);
    }

    #[test]
    fn a_looped_input_keeps_table_counters_continuous() {
        let mut s = Splicer::new();
        let mut out = Vec::new();
        s.segment(&segment(0), true, false, &mut out);
        s.segment(&segment(1), true, false, &mut out);
        // The input starts over: the copy in front repeats the last PAT, then the restarted
        // input's own tables and streams count from where the file began.
        let mut looped = pat(1).to_vec();
        looped.extend_from_slice(&segment(0));
        s.segment(&looped, true, true, &mut out);
        s.segment(&segment(1), true, false, &mut out);
        let r = {
            let mut c = Checker::new();
            c.push_bytes(&out, 0);
            c.report()
        };
        assert_eq!(r.errors(), 0, "{r:?}");
        assert_eq!(r.discontinuities, 2);
    }

    #[test]
    fn a_channel_change_bumps_table_versions() {
        let mut s = Splicer::new();
        let mut out = Vec::new();
        s.segment(&segment(0), true, false, &mut out);
        s.change_channel(&mut out);
        let at = out.len();
        s.segment(&segment(7), true, false, &mut out);
        let p = out[at..].chunks(PACKET).find(|p| ts::pid(p) == 0).unwrap();
        let mut secs = psi::Sections::new();
        let mut version = None;
        secs.push(p.try_into().unwrap(), |sec| {
            version = Some((sec[5] >> 1) & 0x1f)
        });
        assert_eq!(version, Some(1), "the CRC holds and the version moved on");
    }
}
