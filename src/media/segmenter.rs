//! Cuts a TS packet stream into segments on packet boundaries, each a valid entry point where
//! the stream allows.
//!
//! Time is the stream's own: the PCR of the first PID seen carrying one (27 MHz, wrap-safe), or
//! the arrival time for a stream without PCR.
//!
//! **Where to cut** ([`CutRule::RandomAccess`], the default): at the start of a video access
//! unit that is a keyframe (H.264 IDR, HEVC IRAP; [`super::nal`]) once three quarters of the
//! target duration (`--segment-ms`, default 1000) have passed, so that segments follow the
//! GOP as HLS segments do. The video stream and its codec come from the PMT (CRC-checked,
//! [`super::psi`]). Deciding needs the first picture NAL unit of the access unit, which may
//! lie a few packets after the PES start: packets from the PES start on wait in a small
//! pending run ([`PENDING_MAX`]) until the scan answers. A stream whose video the segmenter
//! cannot parse (MPEG-2 video, or a PES without start codes) falls back to the muxer's
//! `random_access_indicator` on the PCR PID; a stream that marks nothing is cut on time.
//! After the maximum duration (twice the target: 2 s by default) a segment is cut at the next
//! access unit (or packet) anyway, and the next one is not an entry point.
//!
//! Every segment starts with copies of the latest PAT and PMT sections that passed their CRC
//! (kept as bytes, [`psi::MAX_SECTION`] at most each, and written out again as whole
//! sections: a PMT listing a dozen audio and subtitle tracks spans several packets) and, on a
//! source that names its channel, an SDT with that name (the input's own SDT is dropped), so
//! that peers learn the name from the signed stream. A segment that starts with those tables
//! and a keyframe is an *entry point*. The segmenter follows the PAT's first program; the
//! others of an MPTS pass through as they are, and our SDT names each of them as the input's
//! SDT did (the channel's name goes to the first), so a player lists every program by name.
//!
//! **Table counters.** The copies keep the PAT's and PMT's continuity counters consistent over
//! the segments as cut: a one-packet copy identical to the last packet on its PID repeats that
//! packet (a legal duplicate: counters unchanged, the stream byte for byte as before; only
//! once, so two heads with no table packet between them do not make a third); any
//! other copy continues the PID's counter, and the input's later packets on that PID are
//! shifted by as many packets (the input's own jumps are kept).

use super::nal::{Codec, RapScan};
use super::psi::{self, SectionCopy, Sections};
use super::ts::{self, PACKET, PCR_HZ};
use crate::proto::wire::MAX_SEGMENT_BYTES;

/// A PCR step larger than this (or backwards) is a break in the stream, not elapsed time.
const MAX_PCR_STEP_US: u64 = 5_000_000;
/// Packets held while the keyframe scan of an access unit has not answered (about 24 KiB).
pub const PENDING_MAX: usize = 128;
/// Packets put in front of a segment at most: PAT and PMT ([`psi::MAX_SECTION_PACKETS`]
/// each), SDT.
pub const HEAD_PACKETS: usize = 2 * psi::MAX_SECTION_PACKETS + 1;

/// How a table PID's packets leave the segmenter (see the module docs on counters).
#[derive(Clone, Copy, Debug, Default)]
struct TableOut {
    /// Added to the input's counters on this PID: copies written as new packets.
    shift: u8,
    /// The last packet written on this PID, as written.
    last: Option<[u8; PACKET]>,
    /// That packet repeats the one before it (a second repeat would not be a legal duplicate).
    repeated: bool,
}

/// A finished segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub data: Vec<u8>,
    pub duration_us: u32,
    /// Starts with PAT and PMT in front and then a keyframe: a player may start here.
    pub entry_point: bool,
    /// Follows a break in the input (a loop, a PCR jump).
    pub discontinuity: bool,
}

/// Where segments may end (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CutRule {
    /// Every target duration, at whatever packet comes.
    Time,
    /// At keyframes near the target duration; at the maximum duration regardless.
    RandomAccess,
}

/// Counters of what the segmenter saw (for logs and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmenterStats {
    /// PSI sections dropped for a bad CRC or a bad length.
    pub psi_errors: u64,
    /// Access units found to start with a keyframe by their NAL units.
    pub keyframes: u64,
    /// Access units whose scan gave no answer (the muxer's mark decided).
    pub undecided: u64,
    /// Segments cut at the maximum duration.
    pub forced_cuts: u64,
}

pub struct Segmenter {
    target_us: u64,
    max_us: u64,
    rule: CutRule,
    cur: Vec<u8>,
    cur_start_us: u64,
    cur_entry: bool,
    cur_discontinuity: bool,
    /// Stream time in µs: PCR-driven once a PCR PID is known.
    stream_us: u64,
    pcr_pid: Option<u16>,
    last_pcr: Option<u64>,
    /// Arrival time of the last PCR: across a break in the PCR (a jump, a loop of the input)
    /// the time that passed is the arrival time's, so that segment durations add up to the
    /// time the stream took. (Dropping it made a looped 8 s file lose 0.1-0.2 s per loop:
    /// peers played faster than the source cut and met the live edge every few minutes.)
    last_pcr_arrival_us: Option<u64>,
    /// Arrival time of the last packet, for streams without PCR.
    last_arrival_us: Option<u64>,
    rai_seen: bool,
    pat_sections: Sections,
    pmt_sections: Sections,
    /// The last good PAT and PMT sections, for segment heads.
    pat: SectionCopy,
    pat_out: TableOut,
    ts_id: u16,
    program: u16,
    pmt_pid: Option<u16>,
    pmt: SectionCopy,
    pmt_out: TableOut,
    video: Option<(u16, Codec)>,
    /// The name written into the SDT in front of every segment.
    service_name: Option<String>,
    sdt: Option<[u8; PACKET]>,
    sdt_cc: u8,
    sdt_version: u8,
    /// The PAT's programs (at most [`psi::MAX_SERVICES`]), and the names the input's SDT
    /// (CRC-checked) gave them: our SDT names the programs after the first by these.
    programs: Vec<u16>,
    input_sdt: Sections,
    input_names: Vec<(u16, String)>,
    /// An access unit whose keyframe scan has not answered: its packets, from the PES start.
    pending: Vec<u8>,
    scan: Option<RapScan>,
    pending_at_us: u64,
    pending_rai: bool,
    break_pending: bool,
    /// The next segment started follows a break.
    next_discontinuity: bool,
    stats: SegmenterStats,
    /// A segment was finished by the packet being pushed: [`Segmenter::push`] returns one at
    /// most, so no second one is cut for the same packet (it would be lost).
    cut_this_packet: bool,
}

impl Segmenter {
    pub fn new(target_ms: u64, rule: CutRule) -> Self {
        let target_us = target_ms.clamp(100, 10_000) * 1000;
        Segmenter {
            target_us,
            max_us: 2 * target_us,
            rule,
            cur: Vec::new(),
            cur_start_us: 0,
            cur_entry: false,
            cur_discontinuity: false,
            stream_us: 0,
            pcr_pid: None,
            last_pcr: None,
            last_pcr_arrival_us: None,
            last_arrival_us: None,
            rai_seen: false,
            pat_sections: Sections::new(),
            pmt_sections: Sections::new(),
            pat: SectionCopy::new(),
            pat_out: TableOut::default(),
            ts_id: 1,
            program: 1,
            pmt_pid: None,
            pmt: SectionCopy::new(),
            pmt_out: TableOut::default(),
            video: None,
            service_name: None,
            sdt: None,
            sdt_cc: 0,
            sdt_version: 0,
            programs: Vec::new(),
            input_sdt: Sections::new(),
            input_names: Vec::new(),
            pending: Vec::new(),
            scan: None,
            pending_at_us: 0,
            pending_rai: false,
            break_pending: false,
            next_discontinuity: false,
            stats: SegmenterStats::default(),
            cut_this_packet: false,
        }
    }

    /// Names the channel in an SDT at the head of every segment (the input's SDT is dropped).
    pub fn with_service_name(mut self, name: &str) -> Self {
        self.service_name = Some(name.to_string());
        self
    }

    pub fn stats(&self) -> SegmenterStats {
        let mut s = self.stats;
        s.psi_errors = self.pat_sections.errors + self.pmt_sections.errors;
        s
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
                let step = match self.last_pcr {
                    Some(last) => Some(ts::pcr_delta(last, pcr) * 1_000_000 / PCR_HZ)
                        .filter(|&d| d <= MAX_PCR_STEP_US),
                    None => None,
                };
                let jumped = self.last_pcr.is_some() && step.is_none();
                self.stream_us += match (step, self.last_pcr_arrival_us) {
                    (Some(d), _) => d,
                    (None, Some(at)) => arrival_us.saturating_sub(at).min(MAX_PCR_STEP_US),
                    (None, None) => 0,
                };
                self.last_pcr = Some(pcr);
                self.last_pcr_arrival_us = Some(arrival_us);
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

    /// Reads PAT and PMT (CRC-checked) and keeps copies of their sections for segment heads.
    fn note_psi(&mut self, p: &[u8; PACKET]) {
        let pid = ts::pid(p);
        if pid == psi::PAT_PID {
            let mut found = None;
            let copy = &mut self.pat;
            self.pat_sections.push(p, |sec| {
                if !psi::crc_checked(sec) {
                    return;
                }
                let Some(all) = psi::parse_pat(sec) else {
                    return;
                };
                if let Some(&(prog, pmt)) = all.first() {
                    copy.set(sec);
                    let programs = all.iter().map(|&(p, _)| p).take(psi::MAX_SERVICES);
                    found = Some((
                        u16::from_be_bytes([sec[3], sec[4]]),
                        prog,
                        pmt,
                        programs.collect::<Vec<u16>>(),
                    ));
                }
            });
            if let Some((ts_id, prog, pmt, programs)) = found {
                if self.pmt_pid != Some(pmt) {
                    self.pmt_pid = Some(pmt);
                    self.pmt.clear();
                    self.pmt_out = TableOut::default();
                    self.pmt_sections = Sections::new();
                }
                if (ts_id, prog) != (self.ts_id, self.program)
                    || programs != self.programs
                    || self.sdt.is_none()
                {
                    self.ts_id = ts_id;
                    self.program = prog;
                    self.programs = programs;
                    self.write_sdt();
                }
            }
        } else if Some(pid) == self.pmt_pid {
            let mut found = None;
            let copy = &mut self.pmt;
            self.pmt_sections.push(p, |sec| {
                if !psi::crc_checked(sec) {
                    return;
                }
                if let Some(pmt) = psi::parse_pmt(sec) {
                    copy.set(sec);
                    found = Some(pmt);
                }
            });
            if let Some(pmt) = found {
                self.video = pmt.video().map(|(t, pid)| {
                    let codec = if t == psi::STREAM_HEVC {
                        Codec::Hevc
                    } else {
                        Codec::H264
                    };
                    (pid, codec)
                });
            }
        }
    }

    /// Reads the input's SDT (CRC-checked) for the names of its programs; our SDT is written
    /// again when they change.
    fn note_input_sdt(&mut self, p: &[u8; PACKET]) {
        let mut names = None;
        self.input_sdt.push(p, |sec| {
            if psi::crc_checked(sec) {
                names = Some(psi::parse_sdt_services(sec));
            }
        });
        if let Some(n) = names.filter(|n| *n != self.input_names) {
            self.input_names = n;
            if self.sdt.is_some() {
                self.write_sdt();
            }
        }
    }

    /// Our SDT: the channel's name on the program followed, then every other program of the
    /// PAT the input's SDT named, under that name. A new version when it changes.
    fn write_sdt(&mut self) {
        let Some(channel) = self.service_name.as_deref() else {
            return;
        };
        let mut services = vec![(self.program, channel)];
        for &prog in self.programs.iter().filter(|&&p| p != self.program) {
            if let Some((_, n)) = self.input_names.iter().find(|(id, _)| *id == prog) {
                services.push((prog, n.as_str()));
            }
        }
        let mut packet = psi::sdt_packet_services(self.ts_id, &services, self.sdt_version);
        if let Some(old) = &self.sdt {
            if old[4..] != packet[4..] {
                self.sdt_version = (self.sdt_version + 1) & 0x1f;
                packet = psi::sdt_packet_services(self.ts_id, &services, self.sdt_version);
            }
        }
        self.sdt = Some(packet);
    }

    /// Adds one aligned packet that arrived at `arrival_us` (any monotonic µs); returns the
    /// segment it completed, if any. One packet completes one segment at most: where it would
    /// end two (an undecided access unit resolved with a cut, then a second cut for the same
    /// packet, which a jumpy clock allows), the second is not made and what it would have cut
    /// stays in the new segment (it used to be dropped).
    pub fn push(&mut self, p: &[u8; PACKET], arrival_us: u64) -> Option<Cut> {
        let pid = ts::pid(p);
        if pid == psi::SDT_PID && self.service_name.is_some() {
            // Ours replaces it, with the names it gives the other programs.
            self.note_input_sdt(p);
            return None;
        }
        self.cut_this_packet = false;
        let jumped = self.advance_clock(p, arrival_us);
        if ts::random_access(p) && Some(pid) == self.pcr_pid {
            self.rai_seen = true;
        }
        self.note_psi(p);
        let mut done = None;
        if jumped || self.break_pending {
            // The break comes before this packet: what is pending ends the old segment.
            self.settle_pending_into_cur();
            if !self.cur.is_empty() {
                done = Some(self.finish());
            }
            self.break_pending = false;
            self.next_discontinuity = true;
        } else if self.cur.len() + self.pending.len() + (HEAD_PACKETS + 1) * PACKET
            > MAX_SEGMENT_BYTES as usize
        {
            self.settle_pending_into_cur();
            done = Some(self.finish());
        }
        let video = self.video.filter(|_| self.rule == CutRule::RandomAccess);
        match video {
            Some((vpid, codec)) if pid == vpid && ts::payload_unit_start(p) => {
                // A new access unit; one still undecided was not a keyframe we could see.
                if !self.pending.is_empty() {
                    let rai = self.pending_rai;
                    done = done.or(self.resolve(rai));
                }
                self.pending.extend_from_slice(p);
                self.pending_at_us = self.stream_us;
                self.pending_rai = ts::random_access(p);
                let mut scan = RapScan::new(codec);
                match ts::pes_payload(p).and_then(|es| scan.push(es)) {
                    Some(key) => done = done.or(self.resolve_scanned(key)),
                    None => self.scan = Some(scan),
                }
            }
            Some((vpid, _)) if !self.pending.is_empty() => {
                self.pending.extend_from_slice(p);
                let mut answer = None;
                if pid == vpid {
                    if let (Some(scan), Some(es)) = (self.scan.as_mut(), ts::payload(p)) {
                        answer = scan.push(es);
                    }
                }
                let gave_up = self.scan.as_ref().is_some_and(|s| s.gave_up());
                if let Some(key) = answer {
                    done = done.or(self.resolve_scanned(key));
                } else if gave_up || self.pending.len() >= PENDING_MAX * PACKET {
                    self.stats.undecided += 1;
                    let rai = self.pending_rai;
                    done = done.or(self.resolve(rai));
                }
            }
            _ => {
                if !self.pending.is_empty() {
                    // A new PMT without the video stream came in the middle of an access unit
                    // still undecided: it goes into the segment first, keeping packet order.
                    let rai = self.pending_rai;
                    done = done.or(self.resolve(rai));
                }
                let elapsed = self.stream_us.saturating_sub(self.cur_start_us);
                if !self.cur.is_empty() && !self.cut_this_packet && self.is_cut_point(p, elapsed) {
                    done = done.or(Some(self.finish()));
                }
                if self.cur.is_empty() {
                    let rai = video.is_none()
                        && self.rai_seen
                        && ts::random_access(p)
                        && Some(pid) == self.pcr_pid;
                    self.start(self.stream_us, rai, Some(p));
                }
                self.append_packets(p);
            }
        }
        done
    }

    /// A cut between access units where the video cannot be read (no video stream known, or
    /// time-only rule): at a muxer-marked random access point, or on time.
    fn is_cut_point(&mut self, p: &[u8], elapsed: u64) -> bool {
        if self.video.is_some() && self.rule == CutRule::RandomAccess {
            // Video known, but no access unit for a while (audio only): the maximum applies.
            let forced = elapsed >= self.max_us;
            self.stats.forced_cuts += forced as u64;
            return forced;
        }
        if !(self.rai_seen && self.rule == CutRule::RandomAccess) {
            return elapsed >= self.target_us;
        }
        let at_rap = ts::random_access(p) && Some(ts::pid(p)) == self.pcr_pid;
        let forced = elapsed >= self.max_us;
        self.stats.forced_cuts += (forced && !at_rap) as u64;
        (at_rap && elapsed >= self.target_us * 3 / 4) || forced
    }

    fn resolve_scanned(&mut self, key: bool) -> Option<Cut> {
        self.stats.keyframes += key as u64;
        self.resolve(key)
    }

    /// The pending access unit is (or is not) a keyframe: cut before it if it is one and the
    /// segment is long enough, or if the segment has reached the maximum; then it joins the
    /// segment in progress.
    fn resolve(&mut self, key: bool) -> Option<Cut> {
        self.scan = None;
        let elapsed = self.pending_at_us.saturating_sub(self.cur_start_us);
        let mut done = None;
        if !self.cur.is_empty() && !self.cut_this_packet {
            let forced = elapsed >= self.max_us;
            if (key && elapsed >= self.target_us * 3 / 4) || forced {
                self.stats.forced_cuts += (forced && !key) as u64;
                done = Some(self.finish_at(elapsed));
            }
        }
        if self.cur.is_empty() {
            self.start(self.pending_at_us, key, None);
        } else if key && !self.cur_entry && self.only_own_psi() {
            // The stream's first segment: its own PAT and PMT, then this keyframe.
            self.cur_entry = true;
        }
        self.append_pending();
        done
    }

    /// The segment so far is the stream's own PAT and PMT and nothing else but other tables.
    fn only_own_psi(&self) -> bool {
        if self.cur.len() > 2 * HEAD_PACKETS * PACKET {
            return false;
        }
        let pids = || self.cur.chunks_exact(PACKET).map(ts::pid);
        pids().all(|pid| pid < 0x20 || Some(pid) == self.pmt_pid)
            && pids().any(|pid| pid == psi::PAT_PID)
            && pids().any(|pid| Some(pid) == self.pmt_pid)
    }

    /// Moves an undecided pending run into the segment in progress as it is.
    fn settle_pending_into_cur(&mut self) {
        self.scan = None;
        if self.pending.is_empty() {
            return;
        }
        if self.cur.is_empty() {
            self.start(self.pending_at_us, false, None);
        }
        self.append_pending();
    }

    fn append_pending(&mut self) {
        let from = self.cur.len();
        self.cur.append(&mut self.pending);
        self.number_tables(from);
    }

    fn append_packets(&mut self, p: &[u8]) {
        let from = self.cur.len();
        self.cur.extend_from_slice(p);
        self.number_tables(from);
    }

    /// Gives the input's PAT and PMT packets appended to the segment from byte `from` on their
    /// output counters (shifted past the copies written so far) and notes each as its PID's
    /// last packet.
    fn number_tables(&mut self, from: usize) {
        let pmt_pid = self.pmt_pid;
        for p in self.cur[from..].chunks_exact_mut(PACKET) {
            let pid = ts::pid(p);
            let t = if pid == psi::PAT_PID {
                &mut self.pat_out
            } else if Some(pid) == pmt_pid {
                &mut self.pmt_out
            } else {
                continue;
            };
            if t.shift != 0 {
                let cc = ts::cc(p).wrapping_add(t.shift);
                ts::set_cc(p, cc);
            }
            t.last = <[u8; PACKET]>::try_from(&*p).ok();
            t.repeated = false;
        }
    }

    /// Starts a segment at stream time `at_us`: PSI copies in front; an entry point if the
    /// stream is about to give a keyframe and the copies are there. `next` is the packet
    /// about to be added, when it is not in the pending run.
    fn start(&mut self, at_us: u64, keyframe_next: bool, next: Option<&[u8; PACKET]>) {
        self.cur_start_us = at_us;
        self.cur_discontinuity = std::mem::take(&mut self.next_discontinuity);
        let mut psi = false;
        if let (false, false, Some(pmt_pid)) =
            (self.pat.is_empty(), self.pmt.is_empty(), self.pmt_pid)
        {
            // The input's next packet on each PID (for a PID with nothing written yet).
            let upcoming = |pid| {
                self.pending
                    .chunks_exact(PACKET)
                    .chain(next.map(|p| &p[..]))
                    .find(|q| ts::pid(q) == pid)
                    .map(ts::cc)
            };
            let (pat_next, pmt_next) = (upcoming(psi::PAT_PID), upcoming(pmt_pid));
            write_copy(
                &mut self.cur,
                &self.pat,
                psi::PAT_PID,
                &mut self.pat_out,
                pat_next,
            );
            write_copy(
                &mut self.cur,
                &self.pmt,
                pmt_pid,
                &mut self.pmt_out,
                pmt_next,
            );
            psi = true;
        }
        if let Some(mut sdt) = self.sdt {
            // Our SDT is sent once per segment: its counter moves on each time.
            ts::set_cc(&mut sdt, self.sdt_cc);
            self.sdt_cc = (self.sdt_cc + 1) & 0x0f;
            self.cur.extend_from_slice(&sdt);
        }
        self.cur_entry = psi && keyframe_next;
    }

    fn finish(&mut self) -> Cut {
        let elapsed = self.stream_us.saturating_sub(self.cur_start_us);
        self.finish_at(elapsed)
    }

    fn finish_at(&mut self, elapsed: u64) -> Cut {
        self.cut_this_packet = true;
        // A duration the clock cannot vouch for (a jump, a stream without time) is nominal.
        let duration_us = if elapsed == 0 || elapsed > self.max_us * 2 {
            self.target_us
        } else {
            elapsed
        };
        Cut {
            data: std::mem::take(&mut self.cur),
            duration_us: duration_us as u32,
            entry_point: std::mem::take(&mut self.cur_entry),
            discontinuity: std::mem::take(&mut self.cur_discontinuity),
        }
    }

    /// The segment in progress, cut now (at the end of a finite input).
    pub fn flush(&mut self) -> Option<Cut> {
        self.settle_pending_into_cur();
        if self.cur.is_empty() {
            return None;
        }
        Some(self.finish())
    }
}

/// Writes a table's section copy on `pid` at the end of `cur`, its counters consistent with
/// the PID's packets written before (`t.last`) and after it (the input's, shifted): a
/// one-packet copy identical to the last packet repeats it (a duplicate, nothing moves; not
/// twice in a row);
/// otherwise the copy continues the counter and the input's later packets are shifted past
/// it. `next_in`: the input's counter on its next packet on this PID, if known (used only
/// when nothing was written on the PID yet).
fn write_copy(
    cur: &mut Vec<u8>,
    copy: &SectionCopy,
    pid: u16,
    t: &mut TableOut,
    next_in: Option<u8>,
) {
    let at = cur.len();
    if let (Some(last), 1, false) = (t.last, copy.packets(), t.repeated) {
        copy.write_packets(pid, ts::cc(&last), cur);
        if cur[at..] == last[..] {
            t.repeated = true;
            return;
        }
        cur.truncate(at);
    }
    let first_cc = match (t.last, next_in) {
        (Some(last), _) => ts::cc(&last).wrapping_add(1),
        // Nothing on this PID written yet: the copy ends where the input's next one follows.
        (None, Some(cc)) => cc.wrapping_add(t.shift),
        (None, None) => 0,
    };
    let n = copy.write_packets(pid, first_cc, cur);
    if n == 0 {
        return;
    }
    t.shift = t.shift.wrapping_add(n as u8) & 0x0f;
    t.last = <[u8; PACKET]>::try_from(&cur[cur.len() - PACKET..]).ok();
    t.repeated = false;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ts::{packet_with_pcr, SYNC};

    /// A video PES start on PID 256 whose first picture is an IDR (or a P) slice, with no
    /// random access mark from the muxer.
    fn video_pes(idr: bool, pcr: Option<u64>) -> [u8; PACKET] {
        let mut p = match pcr {
            Some(v) => packet_with_pcr(256, v, false),
            None => {
                let mut p = [0xffu8; PACKET];
                p[..4].copy_from_slice(&[SYNC, 0x01, 0x00, 0x20]);
                p[4] = 7;
                p[5] = 0;
                p
            }
        };
        p[1] |= 0x40;
        p[3] |= 0x10;
        // A shorter adaptation field, then a PES header and AUD, SPS, and the picture.
        p[4] = 7;
        let pes = [0, 0, 1, 0xe0, 0, 0, 0x80, 0x00, 0];
        p[12..21].copy_from_slice(&pes);
        let nal = if idr { 0x65 } else { 0x41 };
        let es = [
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, nal, 0x88,
        ];
        p[21..21 + es.len()].copy_from_slice(&es);
        p
    }

    /// `secs` of H.264 at 25 frames/s, IDR every `gop` frames, PCR on each picture.
    fn h264_stream(gop: u64, secs: u64) -> Vec<[u8; PACKET]> {
        let mut v = Vec::new();
        for f in 0..secs * 25 {
            if f % 10 == 0 {
                v.push(pat());
                v.push(pmt_with(true));
            }
            let pcr = 27_000_000 + f * 40 * 27_000;
            v.push(video_pes(f % gop == 0, Some(pcr)));
            for _ in 0..5 {
                v.push(es(256));
            }
            v.push(es(257));
        }
        v
    }

    fn starts_with_keyframe(c: &Cut) -> bool {
        let first = &c.data[2 * PACKET..3 * PACKET];
        ts::pid(first) == 256
            && ts::pes_payload(first).is_some_and(|es| es[4] == 0x09 && es.contains(&0x65))
    }

    #[test]
    fn cuts_at_idr_pictures_found_by_their_nal_units() {
        let mut s = Segmenter::new(1000, CutRule::RandomAccess);
        let cuts = run(&mut s, &h264_stream(25, 10));
        assert_eq!(cuts.len(), 9);
        for c in &cuts {
            assert!(c.entry_point);
            assert!(starts_with_keyframe(c));
            assert_eq!(&c.data[..PACKET], &pat()[..]);
            assert_eq!(&c.data[PACKET..2 * PACKET], &pmt_with(true)[..]);
        }
        // (The first one also counts the arrival-time microseconds before the first PCR.)
        assert!(cuts[1..].iter().all(|c| c.duration_us == 1_000_000));
        assert_eq!(s.stats().keyframes, 10);
        assert_eq!(s.stats().psi_errors, 0);
        // A 3 s GOP: cut at each IDR past 3/4 s, and at 2 s anyway (not an entry point).
        let mut s = Segmenter::new(1000, CutRule::RandomAccess);
        let cuts = run(&mut s, &h264_stream(75, 12));
        let kinds: Vec<(u32, bool)> = cuts
            .iter()
            .map(|c| (c.duration_us, c.entry_point))
            .collect();
        assert_eq!(
            kinds[1..5],
            [
                (1_000_000, false),
                (2_000_000, true),
                (1_000_000, false),
                (2_000_000, true)
            ],
            "{kinds:?}"
        );
        assert!(kinds[0].1);
        assert!(s.stats().forced_cuts >= 3);
        assert!(cuts
            .iter()
            .all(|c| c.entry_point == starts_with_keyframe(c)));
    }

    #[test]
    fn a_pmt_with_a_bad_crc_is_not_believed() {
        let mut bad = pmt_with(true);
        bad[20] ^= 0x40;
        let mut pk = h264_stream(25, 4);
        for p in pk.iter_mut() {
            if ts::pid(p) == 0x1000 {
                *p = bad;
            }
        }
        let mut s = Segmenter::new(1000, CutRule::RandomAccess);
        let cuts = run(&mut s, &pk);
        // No PMT: no copies in front, no entry points, no video parsing; cut on time.
        assert!(cuts.iter().all(|c| !c.entry_point));
        assert!(s.stats().psi_errors > 0);
        assert_eq!(s.stats().keyframes, 0);
    }

    #[test]
    fn a_named_source_writes_its_sdt_and_drops_the_input_one() {
        let mut pk = h264_stream(25, 3);
        pk.insert(5, psi::sdt_packet(1, 1, "Service01", 0));
        let mut s = Segmenter::new(1000, CutRule::RandomAccess).with_service_name("news");
        let cuts = run(&mut s, &pk);
        for c in &cuts[1..] {
            let sdt = &c.data[2 * PACKET..3 * PACKET];
            assert_eq!(ts::pid(sdt), psi::SDT_PID);
            let mut name = None;
            psi::Sections::new().push(sdt.try_into().unwrap(), |sec| {
                name = psi::parse_sdt_name(sec)
            });
            assert_eq!(name.as_deref(), Some("news"));
            assert_eq!(
                c.data
                    .chunks(PACKET)
                    .filter(|p| ts::pid(p) == psi::SDT_PID)
                    .count(),
                1
            );
        }
    }

    /// A PMT section (CRC included) for program 1: PCR and H.264 video on 256, then
    /// `audio` AAC streams on 257… each with an ISO-639 language descriptor ("eng", "deu", …).
    /// `audio_type` is the audio streams' stream type (to make versions that differ).
    fn big_pmt(audio: u16, audio_type: u8) -> Vec<u8> {
        let mut sec = vec![0x02, 0xb0, 0, 0, 1, 0xc1, 0, 0, 0xe1, 0x00, 0xf0, 0];
        sec.extend_from_slice(&[psi::STREAM_H264, 0xe1, 0x00, 0xf0, 0]);
        for i in 0..audio {
            let pid = 257 + i;
            let lang = [b'a' + (i % 26) as u8, b'b' + (i / 26) as u8, b'c'];
            sec.extend_from_slice(&[audio_type, 0xe0 | (pid >> 8) as u8, pid as u8, 0xf0, 6]);
            sec.extend_from_slice(&[0x0a, 4, lang[0], lang[1], lang[2], 0]);
        }
        let len = sec.len() - 3 + 4;
        sec[1] = 0xb0 | (len >> 8) as u8;
        sec[2] = len as u8;
        let crc = psi::crc32(&sec);
        sec.extend_from_slice(&crc.to_be_bytes());
        sec
    }

    /// A section as a muxer might send it: (with `af`, an adaptation field of stuffing in the
    /// first packet), a pointer field, then continuation packets; 0xff after the end.
    fn muxed_section(pid: u16, sec: &[u8], af: bool, cc: &mut u8) -> Vec<[u8; PACKET]> {
        let mut v = Vec::new();
        let mut rest = sec;
        let mut first = true;
        while first || !rest.is_empty() {
            let mut p = [0xffu8; PACKET];
            p[0] = SYNC;
            p[1] = (pid >> 8) as u8 | if first { 0x40 } else { 0 };
            p[2] = pid as u8;
            p[3] = 0x10 | *cc;
            let mut at = 4;
            if first && af {
                // Two bytes of adaptation field, then the pointer field.
                p[3] |= 0x20;
                p[4] = 1;
                p[5] = 0;
                p[6] = 0;
                at = 7;
            } else if first {
                p[4] = 0;
                at = 5;
            }
            let k = rest.len().min(PACKET - at);
            p[at..at + k].copy_from_slice(&rest[..k]);
            rest = &rest[k..];
            *cc = (*cc + 1) & 0x0f;
            first = false;
            v.push(p);
        }
        v
    }

    /// `secs` of H.264 (IDR every `gop` frames) with PAT and the PMT section `pmt` (as
    /// [`muxed_section`] sends it) every 10 frames, the tables' counters moving on properly.
    fn stream_with_pmt(
        gop: u64,
        secs: u64,
        af: bool,
        pmt: &dyn Fn(u64) -> Vec<u8>,
    ) -> Vec<[u8; PACKET]> {
        let (mut pat_cc, mut pmt_cc) = (0u8, 0u8);
        let mut v = Vec::new();
        for f in 0..secs * 25 {
            if f % 10 == 0 {
                let mut p = pat();
                ts::set_cc(&mut p, pat_cc);
                pat_cc = (pat_cc + 1) & 0x0f;
                v.push(p);
                v.extend(muxed_section(0x1000, &pmt(f), af, &mut pmt_cc));
            }
            let pcr = 27_000_000 + f * 40 * 27_000;
            v.push(video_pes(f % gop == 0, Some(pcr)));
            for _ in 0..5 {
                v.push(es(256));
            }
            v.push(es(257));
        }
        v
    }

    /// Every PAT and PMT packet of `data` continues its PID's counter, or repeats the packet
    /// before it byte for byte (a legal duplicate, never two in a row).
    fn tables_continuous(data: &[u8]) -> bool {
        let mut last: Vec<(u16, &[u8], bool)> = Vec::new();
        for p in data.chunks(PACKET) {
            let pid = ts::pid(p);
            if pid != 0 && pid != 0x1000 {
                continue;
            }
            match last.iter_mut().find(|(q, _, _)| *q == pid) {
                None => last.push((pid, p, false)),
                Some(e) => {
                    let dup = ts::cc(p) == ts::cc(e.1);
                    let ok = if dup {
                        p == e.1 && !e.2
                    } else {
                        ts::cc(p) == (ts::cc(e.1) + 1) & 0x0f
                    };
                    if !ok {
                        return false;
                    }
                    *e = (pid, p, dup);
                }
            }
        }
        true
    }

    /// The PMT sections (CRC-checked) of the PMT packets at the head of a cut, and how many
    /// packets the head's PAT and PMT took.
    fn head_pmt(c: &Cut) -> (Vec<Vec<u8>>, usize) {
        let mut secs = Vec::new();
        let mut sections = psi::Sections::new();
        let mut n = 0;
        for p in c.data.chunks(PACKET) {
            let pid = ts::pid(p);
            if pid != 0 && pid != 0x1000 {
                break;
            }
            n += 1;
            if pid == 0x1000 {
                sections.push(p.try_into().unwrap(), |s| secs.push(s.to_vec()));
            }
        }
        (secs, n)
    }

    #[test]
    fn a_pmt_spanning_packets_is_copied_whole_in_front_of_every_segment() {
        let sec = big_pmt(39, 0x0f);
        assert_eq!(sec.len(), 450);
        let pk = stream_with_pmt(25, 6, true, &|_| sec.clone());
        assert_eq!(pk.iter().filter(|p| ts::pid(*p) == 0x1000).count(), 3 * 15);
        let mut s = Segmenter::new(1000, CutRule::RandomAccess);
        let mut cuts = run(&mut s, &pk);
        cuts.extend(s.flush());
        assert_eq!(cuts.len(), 6);
        assert_eq!(s.stats().psi_errors, 0);
        for c in &cuts[1..] {
            assert!(c.entry_point);
            // PAT, then the PMT in 3 packets: the section as it came, pointer field 0,
            // stuffing after it; then the keyframe.
            let (secs, n) = head_pmt(c);
            assert_eq!(n, 4);
            assert_eq!(secs, vec![sec.clone()]);
            let head = &c.data[PACKET..4 * PACKET];
            assert!(ts::payload_unit_start(head) && head[4] == 0 && head[3] & 0x20 == 0);
            assert_eq!(&head[5..PACKET], &sec[..183]);
            assert_eq!(&head[PACKET + 4..2 * PACKET], &sec[183..367]);
            assert_eq!(&head[2 * PACKET + 4..2 * PACKET + 4 + 83], &sec[367..]);
            assert!(head[2 * PACKET + 4 + 83..].iter().all(|&b| b == 0xff));
            let first = &c.data[4 * PACKET..5 * PACKET];
            assert_eq!(ts::pid(first), 256);
            assert!(ts::pes_payload(first).is_some_and(|es| es.contains(&0x65)));
            // The player starting here reads the whole table from the head alone.
            let pmt = psi::parse_pmt(&secs[0]).unwrap();
            assert_eq!(pmt.streams.len(), psi::MAX_STREAMS);
            assert_eq!(pmt.video(), Some((psi::STREAM_H264, 256)));
        }
        // Counters: the copies continue the PMT's, the input's later packets follow them.
        let all: Vec<u8> = cuts.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert!(tables_continuous(&all));
        // Everything but the copies is the input, in order (counters aside).
        let body: Vec<u8> = cuts
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.data[if i == 0 { 0 } else { 4 * PACKET }..].to_vec())
            .collect();
        let input: Vec<u8> = pk.iter().flatten().copied().collect();
        assert_eq!(body.len(), input.len());
        for (a, b) in body.chunks(PACKET).zip(input.chunks(PACKET)) {
            assert_eq!((&a[..3], &a[4..]), (&b[..3], &b[4..]));
        }
    }

    #[test]
    fn one_packet_tables_are_repeated_as_they_came() {
        // A one-packet PMT: the copies in front repeat the last PAT and PMT packets exactly
        // (duplicates), and the input passes through byte for byte.
        let pk = stream_with_pmt(25, 6, false, &|_| big_pmt(1, 0x0f));
        let mut s = Segmenter::new(1000, CutRule::RandomAccess);
        let mut cuts = run(&mut s, &pk);
        cuts.extend(s.flush());
        assert_eq!(cuts.len(), 6);
        let mut input = pk.iter().flatten().copied();
        let mut last: Vec<(u16, Vec<u8>)> = Vec::new();
        for (i, c) in cuts.iter().enumerate() {
            assert!(c.entry_point);
            let mut body = &c.data[..];
            if i > 0 {
                for (k, pid) in [0u16, 0x1000].into_iter().enumerate() {
                    let copy = &c.data[k * PACKET..(k + 1) * PACKET];
                    let (_, prev) = last.iter().find(|(q, _)| *q == pid).unwrap();
                    assert_eq!(copy, &prev[..]);
                }
                body = &c.data[2 * PACKET..];
            }
            for p in body.chunks(PACKET) {
                let q: Vec<u8> = input.by_ref().take(PACKET).collect();
                assert_eq!(p, &q[..]);
                let pid = ts::pid(p);
                last.retain(|(x, _)| *x != pid);
                last.push((pid, p.to_vec()));
            }
        }
        assert!(input.next().is_none());
        let all: Vec<u8> = cuts.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert!(tables_continuous(&all));
        // Segments shorter than the tables' period: a copy repeats a packet once; the next
        // copy before the input's next table packet moves the counter on instead.
        let pk = stream_with_pmt(1, 4, false, &|_| big_pmt(1, 0x0f));
        let mut s = Segmenter::new(100, CutRule::RandomAccess);
        let cuts = run(&mut s, &pk);
        assert!(cuts.len() > 40, "{}", cuts.len());
        assert!(cuts.iter().all(|c| c.entry_point));
        let all: Vec<u8> = cuts.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert!(tables_continuous(&all));
    }

    #[test]
    fn a_multi_packet_pmt_with_a_bad_crc_is_never_copied() {
        // Every PMT bad: no copies, no entry points.
        let mut bad = big_pmt(39, 0x0f);
        bad[300] ^= 0x01;
        let pk = stream_with_pmt(25, 4, true, &|_| bad.clone());
        let mut s = Segmenter::new(1000, CutRule::RandomAccess);
        let mut cuts = run(&mut s, &pk);
        cuts.extend(s.flush());
        assert!(!cuts.is_empty());
        assert!(cuts.iter().all(|c| !c.entry_point));
        assert!(s.stats().psi_errors >= 10);
        let pmt_packets = |d: &[u8]| d.chunks(PACKET).filter(|p| ts::pid(p) == 0x1000).count();
        let out: usize = cuts.iter().map(|c| pmt_packets(&c.data)).sum();
        assert_eq!(out, pmt_packets(pk.as_flattened()));
        // A good PMT, then a changed one whose CRC fails: the heads keep the good one.
        let good = big_pmt(39, 0x0f);
        let mut changed = big_pmt(39, 0x03);
        changed[400] ^= 0x80;
        let pk = stream_with_pmt(25, 6, true, &|f| {
            if f < 20 {
                good.clone()
            } else {
                changed.clone()
            }
        });
        let mut s = Segmenter::new(1000, CutRule::RandomAccess);
        let cuts = run(&mut s, &pk);
        assert_eq!(cuts.len(), 5);
        for c in &cuts[1..] {
            assert!(c.entry_point);
            assert_eq!(head_pmt(c).0, vec![good.clone()]);
        }
        let all: Vec<u8> = cuts.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert!(tables_continuous(&all));
    }

    #[test]
    fn a_pmt_dropping_the_video_in_an_undecided_access_unit_keeps_packet_order() {
        let mut pk = h264_stream(25, 2);
        // A video PES start whose picture is not in its first packet: the scan waits.
        let mut au = video_pes(true, Some(27_000_000 + 50 * 40 * 27_000));
        au[21..].fill(0xff);
        au[21..27].copy_from_slice(&[0, 0, 0, 1, 0x09, 0xf0]);
        // (The stream's tables all have counter 0: this one must not look like a repeat.)
        let mut radio = pmt_with(false);
        ts::set_cc(&mut radio, 1);
        pk.extend([au, es(257), pat(), radio]);
        pk.extend((0..40).map(|_| es(257)));
        pk.extend(stream(25, true).into_iter().skip(2).take(400));
        let mut s = Segmenter::new(1000, CutRule::RandomAccess);
        let mut cuts = run(&mut s, &pk);
        cuts.extend(s.flush());
        // Copies aside, the input in order.
        let out: Vec<u8> = cuts.iter().flat_map(|c| c.data.iter().copied()).collect();
        let added = crate::harness::copies_added(pk.as_flattened(), &out);
        assert!(added.is_some_and(|n| n <= 2 * cuts.len()), "{added:?}");
    }

    fn es(pid: u16) -> [u8; PACKET] {
        let mut p = [0u8; PACKET];
        p[..4].copy_from_slice(&[SYNC, (pid >> 8) as u8, pid as u8, 0x10]);
        p
    }

    fn section(pid: u16, body: &[u8]) -> [u8; PACKET] {
        let mut sec = body.to_vec();
        let crc = psi::crc32(&sec);
        sec.extend_from_slice(&crc.to_be_bytes());
        let mut p = [0xffu8; PACKET];
        p[..5].copy_from_slice(&[SYNC, 0x40 | (pid >> 8) as u8, pid as u8, 0x10, 0]);
        p[5..5 + sec.len()].copy_from_slice(&sec);
        p
    }

    fn pat() -> [u8; PACKET] {
        section(0, &[0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00])
    }

    /// Program 1: PCR on 256, H.264 video on 256 (when `video`), audio on 257.
    fn pmt_with(video: bool) -> [u8; PACKET] {
        let vt = if video { psi::STREAM_H264 } else { 0x02 };
        section(
            0x1000,
            &[
                0x02, 0xb0, 23, 0, 1, 0xc1, 0, 0, 0xe1, 0, 0xf0, 0, vt, 0xe1, 0, 0xf0, 0, 0x0f,
                0xe1, 1, 0xf0, 0,
            ],
        )
    }

    fn pmt() -> [u8; PACKET] {
        pmt_with(false)
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

    #[test]
    fn durations_add_up_to_the_time_a_looped_input_took() {
        // Two passes of a 10 s file paced by its PCR: frame f of pass k arrives at
        // k * 10 s + f * 40 ms, so the second pass's first PCR comes 40 ms after the first
        // pass's last one although the PCR went back.
        let mut s = Segmenter::new(1000, CutRule::Time);
        let pk = stream(25, true);
        let mut frame = 0u64;
        let mut total = 0u64;
        for pass in 0..2u64 {
            if pass == 1 {
                s.mark_discontinuity();
            }
            for p in &pk {
                if ts::pcr(p).is_some() {
                    frame += 1;
                }
                let arrival = pass * 10_000_000 + frame.saturating_sub(1) % 250 * 40_000;
                if let Some(c) = s.push(p, arrival) {
                    total += c.duration_us as u64;
                }
            }
        }
        // First PCR at 0, last at 10 s + 9.96 s, where the last cut came (what is left, the
        // last frame, has no duration of its own). Without the arrival time across the
        // loop: 19.92 s.
        assert_eq!(total, 19_960_000);
    }
}
