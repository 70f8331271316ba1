//! A transport stream checker after ETSI TR 101 290's first-priority indicators, for tests,
//! benches and a quick look at what a player gets (`examples/tscheck.rs`).
//!
//! Owns the counts of: TS_sync_loss and Sync_byte_error (1.1, 1.2: sync is acquired after five
//! sync bytes 188 bytes apart and lost after two bad ones), PAT_error (1.3: PID 0 absent for
//! more than 0.5 s, a table other than the PAT on it, or scrambled), Continuity_count_error
//! (1.4: a counter out of order or a packet sent more than twice; packets after a
//! `discontinuity_indicator` are not judged, and those are counted apart), PMT_error (1.5: a
//! PMT PID the PAT names absent for more than 0.5 s, or scrambled) and PID_error (1.6: a PID
//! the PMT names absent for more than [`PID_TIMEOUT_US`]). CRC failures of PAT and PMT sections
//! (2.2) are counted too.
//!
//! Time is the stream's own (its first PCR PID, wrap-safe; a jump of more than a second is a
//! discontinuity, not elapsed time), so a burst delivered faster than real time is judged as
//! the decoder will play it. Before the first PCR the caller's arrival time is used.

use super::psi::{self, Sections};
use super::ts::{self, PACKET, PCR_HZ, SYNC};

/// Tables' maximum repetition interval (PAT, PMT).
pub const TABLE_TIMEOUT_US: u64 = 500_000;
/// A stream the PMT names may be absent this long (TR 101 290 leaves it to the user).
pub const PID_TIMEOUT_US: u64 = 5_000_000;
/// PIDs tracked (a TS has at most 8192; a program far fewer).
const MAX_TRACKED: usize = 64;
/// Sync bytes in a row that acquire sync.
const ACQUIRE: usize = 5;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub packets: u64,
    pub sync_loss: u64,
    pub sync_byte_errors: u64,
    pub pat_errors: u64,
    pub cc_errors: u64,
    pub pmt_errors: u64,
    pub pid_errors: u64,
    pub crc_errors: u64,
    /// Packets with `discontinuity_indicator` set (signalled breaks, not errors).
    pub discontinuities: u64,
    /// Stream time covered, in µs.
    pub stream_us: u64,
}

impl Report {
    /// First-priority errors, all kinds together.
    pub fn errors(&self) -> u64 {
        self.sync_loss
            + self.sync_byte_errors
            + self.pat_errors
            + self.cc_errors
            + self.pmt_errors
            + self.pid_errors
    }
}

#[derive(Clone, Copy, Debug)]
struct Pid {
    pid: u16,
    last_cc: Option<u8>,
    dups: u8,
    last_seen_us: u64,
    /// Named by the PAT (a PMT) or a PMT (a stream): absence is an error.
    expected: Option<Kind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pmt,
    Stream,
}

#[derive(Debug, Default)]
pub struct Checker {
    buf: Vec<u8>,
    locked: bool,
    bad_in_row: u32,
    pids: Vec<Pid>,
    pat: Sections,
    pmts: Vec<(u16, Sections)>,
    last_pat_us: Option<u64>,
    pcr_pid: Option<u16>,
    last_pcr: Option<u64>,
    pcr_break: bool,
    now_us: u64,
    last_arrival_us: Option<u64>,
    r: Report,
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn report(&self) -> Report {
        let mut r = self.r;
        r.crc_errors = self.pat.errors + self.pmts.iter().map(|(_, s)| s.errors).sum::<u64>();
        r.stream_us = self.now_us;
        r
    }

    /// Feeds bytes as they came (any alignment) at arrival time `arrival_us`.
    pub fn push_bytes(&mut self, data: &[u8], arrival_us: u64) {
        self.buf.extend_from_slice(data);
        let mut i = 0;
        loop {
            if self.locked {
                if self.buf.len() - i < PACKET {
                    break;
                }
                if self.buf[i] == SYNC {
                    self.bad_in_row = 0;
                    let mut p = [0u8; PACKET];
                    p.copy_from_slice(&self.buf[i..i + PACKET]);
                    self.packet(&p, arrival_us);
                } else {
                    self.r.sync_byte_errors += 1;
                    self.bad_in_row += 1;
                    if self.bad_in_row >= 2 {
                        self.r.sync_loss += 1;
                        self.locked = false;
                        i += 1;
                        continue;
                    }
                }
                i += PACKET;
            } else {
                if self.buf.len() - i < ACQUIRE * PACKET {
                    break;
                }
                if (0..ACQUIRE).all(|k| self.buf[i + k * PACKET] == SYNC) {
                    self.locked = true;
                    self.bad_in_row = 0;
                } else {
                    i += 1;
                }
            }
        }
        self.buf.drain(..i);
    }

    fn clock(&mut self, p: &[u8], arrival_us: u64) {
        let pid = ts::pid(p);
        // A discontinuity on the PCR PID starts a new timebase at its next PCR.
        if ts::discontinuity(p) && Some(pid) == self.pcr_pid {
            self.pcr_break = true;
        }
        if let Some(pcr) = ts::pcr(p) {
            let pcr_pid = *self.pcr_pid.get_or_insert(pid);
            if pcr_pid == pid {
                if let Some(last) = self.last_pcr {
                    let d = ts::pcr_delta(last, pcr) * 1_000_000 / PCR_HZ;
                    if d <= 1_000_000 && !self.pcr_break {
                        self.now_us += d;
                    }
                }
                self.pcr_break = false;
                self.last_pcr = Some(pcr);
            }
            return;
        }
        if self.pcr_pid.is_none() {
            if let Some(last) = self.last_arrival_us {
                self.now_us += arrival_us.saturating_sub(last);
            }
            self.last_arrival_us = Some(arrival_us);
        }
    }

    fn packet(&mut self, p: &[u8; PACKET], arrival_us: u64) {
        self.r.packets += 1;
        self.clock(p, arrival_us);
        let now = self.now_us;
        let pid = ts::pid(p);
        let scrambled = p[3] & 0xc0 != 0;
        if self.last_pat_us.is_none() {
            self.last_pat_us = Some(now);
        }
        if pid == psi::PAT_PID {
            if scrambled {
                self.r.pat_errors += 1;
            }
            let mut progs = None;
            let mut wrong_table = false;
            self.pat.push(p, |sec| {
                if sec[0] == psi::TABLE_PAT {
                    progs = psi::parse_pat(sec);
                } else {
                    wrong_table = true;
                }
            });
            self.r.pat_errors += wrong_table as u64;
            self.last_pat_us = Some(now);
            for (_, pmt) in progs.unwrap_or_default() {
                if !self.pmts.iter().any(|(q, _)| *q == pmt) && self.pmts.len() < MAX_TRACKED {
                    self.pmts.push((pmt, Sections::new()));
                }
                self.expect(pmt, Kind::Pmt, now);
            }
        }
        if let Some(k) = self.pmts.iter().position(|(q, _)| *q == pid) {
            if scrambled {
                self.r.pmt_errors += 1;
            }
            let mut found = None;
            self.pmts[k].1.push(p, |sec| found = psi::parse_pmt(sec));
            if let Some(pmt) = found {
                for (_, es) in pmt.streams {
                    self.expect(es, Kind::Stream, now);
                }
            }
        }
        if pid != ts::NULL_PID {
            self.continuity(p, now);
        }
        self.timeouts(now);
    }

    fn expect(&mut self, pid: u16, kind: Kind, now: u64) {
        if let Some(s) = self.pids.iter_mut().find(|s| s.pid == pid) {
            s.expected = Some(kind);
        } else if self.pids.len() < MAX_TRACKED {
            self.pids.push(Pid {
                pid,
                last_cc: None,
                dups: 0,
                last_seen_us: now,
                expected: Some(kind),
            });
        }
    }

    fn continuity(&mut self, p: &[u8], now: u64) {
        let pid = ts::pid(p);
        let cc = ts::cc(p);
        let disc = ts::discontinuity(p);
        self.r.discontinuities += disc as u64;
        let st = match self.pids.iter_mut().position(|s| s.pid == pid) {
            Some(k) => &mut self.pids[k],
            None if self.pids.len() < MAX_TRACKED => {
                self.pids.push(Pid {
                    pid,
                    last_cc: None,
                    dups: 0,
                    last_seen_us: now,
                    expected: None,
                });
                self.pids.last_mut().expect("just pushed")
            }
            None => return,
        };
        st.last_seen_us = now;
        if let (Some(last), false) = (st.last_cc, disc) {
            if ts::has_payload(p) {
                if cc == last {
                    st.dups += 1;
                    if st.dups > 1 {
                        self.r.cc_errors += 1;
                    }
                } else {
                    st.dups = 0;
                    if cc != (last + 1) & 0x0f {
                        self.r.cc_errors += 1;
                    }
                }
            } else if cc != last {
                self.r.cc_errors += 1;
            }
        } else {
            st.dups = 0;
        }
        st.last_cc = Some(cc);
    }

    fn timeouts(&mut self, now: u64) {
        if let Some(t) = self.last_pat_us {
            if now.saturating_sub(t) > TABLE_TIMEOUT_US {
                self.r.pat_errors += 1;
                self.last_pat_us = Some(now);
            }
        }
        for s in self.pids.iter_mut() {
            let limit = match s.expected {
                Some(Kind::Pmt) => TABLE_TIMEOUT_US,
                Some(Kind::Stream) => PID_TIMEOUT_US,
                None => continue,
            };
            if now.saturating_sub(s.last_seen_us) > limit {
                match s.expected {
                    Some(Kind::Pmt) => self.r.pmt_errors += 1,
                    _ => self.r.pid_errors += 1,
                }
                s.last_seen_us = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ts::packet_with_pcr;

    fn section(pid: u16, body: &[u8], cc: u8) -> [u8; PACKET] {
        let mut sec = body.to_vec();
        let crc = psi::crc32(&sec);
        sec.extend_from_slice(&crc.to_be_bytes());
        let mut p = [0xffu8; PACKET];
        p[..5].copy_from_slice(&[SYNC, 0x40 | (pid >> 8) as u8, pid as u8, 0x10 | cc, 0]);
        p[5..5 + sec.len()].copy_from_slice(&sec);
        p
    }

    fn clean() -> Vec<[u8; PACKET]> {
        stream(50)
    }

    /// `frames` × 40 ms: PAT and PMT every 80 ms, video PID 256 (PCR every 40 ms), audio 257.
    fn stream(frames: u64) -> Vec<[u8; PACKET]> {
        let pmt_body = [
            0x02, 0xb0, 23, 0, 1, 0xc1, 0, 0, 0xe1, 0, 0xf0, 0, 0x1b, 0xe1, 0, 0xf0, 0, 0x0f, 0xe1,
            1, 0xf0, 0,
        ];
        let pat_body = [0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00];
        let mut v = Vec::new();
        let (mut vcc, mut acc, mut tcc) = (0u8, 0u8, 0u8);
        for f in 0..frames {
            if f % 2 == 0 {
                v.push(section(0, &pat_body, tcc));
                v.push(section(0x1000, &pmt_body, tcc));
                tcc = (tcc + 1) & 0x0f;
            }
            let mut pcr = packet_with_pcr(256, f * 40 * 27_000, false);
            pcr[3] = 0x20 | vcc; // adaptation only: the counter stays
            v.push(pcr);
            for _ in 0..3 {
                let mut p = [0u8; PACKET];
                vcc = (vcc + 1) & 0x0f;
                p[..4].copy_from_slice(&[SYNC, 0x01, 0x00, 0x10 | vcc]);
                v.push(p);
            }
            let mut a = [0u8; PACKET];
            acc = (acc + 1) & 0x0f;
            a[..4].copy_from_slice(&[SYNC, 0x01, 0x01, 0x10 | acc]);
            v.push(a);
        }
        v
    }

    fn check(pk: &[[u8; PACKET]]) -> Report {
        let mut c = Checker::new();
        let bytes: Vec<u8> = pk.iter().flatten().copied().collect();
        for chunk in bytes.chunks(1000) {
            c.push_bytes(chunk, 0);
        }
        c.report()
    }

    #[test]
    fn a_clean_stream_has_no_errors() {
        let r = check(&clean());
        assert_eq!(r.errors(), 0, "{r:?}");
        assert_eq!(r.packets, 50 * 5 + 50);
        assert_eq!(r.stream_us, 49 * 40_000);
    }

    #[test]
    fn each_first_priority_error_is_seen() {
        // A lost video packet: one CC error.
        let mut pk = clean();
        pk.remove(10);
        assert_eq!(check(&pk).cc_errors, 1);
        // The same packet three times: the second copy is an error.
        let mut pk = clean();
        let p = pk[10];
        pk.insert(10, p);
        assert_eq!(check(&pk).cc_errors, 0);
        pk.insert(10, p);
        assert_eq!(check(&pk).cc_errors, 1);
        // A discontinuity indicator excuses the jump.
        let mut pk = clean();
        assert_eq!(
            (ts::pid(&pk[4]), ts::cc(&pk[4]), ts::cc(&pk[5])),
            (256, 2, 3)
        );
        pk.remove(4);
        pk.insert(4, ts::discontinuity_packet(256, 2));
        let r = check(&pk);
        assert_eq!((r.cc_errors, r.discontinuities), (0, 1));
        // No PAT and PMT for about 0.7 s: PAT and PMT errors.
        let pk: Vec<_> = clean()
            .into_iter()
            .enumerate()
            .filter(|(i, p)| !((100..=200).contains(i) && matches!(ts::pid(p), 0 | 0x1000)))
            .map(|(_, p)| p)
            .collect();
        let r = check(&pk);
        assert!(r.pat_errors >= 1 && r.pmt_errors >= 1, "{r:?}");
        // A corrupted sync byte, then two in a row (sync lost, then found again).
        let mut pk = clean();
        pk[20][0] = 0x46;
        let r = check(&pk);
        assert_eq!((r.sync_byte_errors, r.sync_loss), (1, 0));
        pk[40][0] = 0;
        pk[41][0] = 0;
        let r = check(&pk);
        assert_eq!((r.sync_byte_errors, r.sync_loss), (3, 1));
        // A PAT section with a bad CRC is counted (priority 2) and not believed.
        let mut pk = clean();
        pk[0][10] ^= 0xff;
        assert_eq!(check(&pk).crc_errors, 1);
    }

    #[test]
    fn a_stream_the_pmt_names_but_never_sends_is_a_pid_error() {
        // 12 s of PAT/PMT and video only: audio PID 257 is named but absent.
        let pk: Vec<_> = stream(300)
            .into_iter()
            .filter(|p| ts::pid(p) != 257)
            .collect();
        let r = check(&pk);
        assert!(r.pid_errors >= 1, "{r:?}");
        assert_eq!(r.cc_errors, 0, "{r:?}");
    }
}
