//! Program-specific information: the tables that tell a decoder what a transport stream holds.
//!
//! Owns section reassembly from TS packets (a section may start anywhere after a pointer field
//! and span packets), the MPEG-2 CRC-32 every section ends with (a section whose CRC fails is
//! dropped and counted, never parsed), and the three tables the project reads or writes:
//! the PAT (program → PMT PID), the PMT (elementary streams and their types, the PCR PID) and
//! the SDT's service names: a source writes one naming its channel (so that peers learn the
//! name from the signed stream itself) and, for an input of several programs (an MPTS), every
//! other program under the name the input's SDT gave it.

use super::ts::{self, PACKET, SYNC};

/// PID of the Program Association Table.
pub const PAT_PID: u16 = 0x0000;
/// PID of the Service Description Table.
pub const SDT_PID: u16 = 0x0011;
/// Table ids.
pub const TABLE_PAT: u8 = 0x00;
pub const TABLE_PMT: u8 = 0x02;
pub const TABLE_SDT_ACTUAL: u8 = 0x42;
/// Largest PSI section (PAT, PMT, SDT): a 12-bit length of at most 1021, plus its 3-byte head.
pub const MAX_SECTION: usize = 1024;
/// TS payload bytes in a packet without an adaptation field.
const PAYLOAD: usize = PACKET - 4;
/// Packets one section takes at most when written from a packet's payload start (pointer
/// field 0, no adaptation field): 6 for [`MAX_SECTION`].
pub const MAX_SECTION_PACKETS: usize = (MAX_SECTION + 1).div_ceil(PAYLOAD);
/// Elementary streams read from one PMT at most (more are ignored, not an error).
pub const MAX_STREAMS: usize = 32;
/// Longest service name written or read.
pub const MAX_NAME: usize = 64;
/// Services read from one SDT section, and programs named in the SDT a source writes, at most
/// (an MPTS carries a handful; more are ignored, not an error).
pub const MAX_SERVICES: usize = 16;

/// Stream types (ISO/IEC 13818-1 table 2-34) the segmenter knows keyframes of.
pub const STREAM_H264: u8 = 0x1b;
pub const STREAM_HEVC: u8 = 0x24;

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, initial all ones, no reflection, no final xor).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = (i as u32) << 24;
            let mut k = 0;
            while k < 8 {
                c = if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04c1_1db7
                } else {
                    c << 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc = (crc << 8) ^ TABLE[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

/// Reassembles the sections of one PID from its packets.
#[derive(Debug, Default)]
pub struct Sections {
    buf: Vec<u8>,
    /// Whole length of the section being gathered (head included), once its head is in.
    want: Option<usize>,
    /// Sections dropped: bad CRC, bad length, or cut short by a lost packet.
    pub errors: u64,
    last_cc: Option<u8>,
}

impl Sections {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one packet of this PID; calls `out` with each whole section whose CRC holds.
    pub fn push(&mut self, p: &[u8; PACKET], mut out: impl FnMut(&[u8])) {
        let Some(pl) = ts::payload(p) else { return };
        // A lost packet (continuity gap) cuts the section in progress.
        let cc = ts::cc(p);
        if let Some(last) = self.last_cc {
            if cc == last {
                return; // a duplicate packet
            }
            if cc != (last + 1) & 0x0f && !self.buf.is_empty() {
                self.errors += 1;
                self.reset();
            }
        }
        self.last_cc = Some(cc);
        let mut rest = pl;
        if ts::payload_unit_start(p) {
            let Some((&ptr, after)) = pl.split_first() else {
                return;
            };
            let ptr = ptr as usize;
            if ptr > after.len() {
                self.errors += 1;
                self.reset();
                return;
            }
            // The tail of the previous section, then new sections.
            if !self.buf.is_empty() {
                self.take(&after[..ptr], &mut out);
                if !self.buf.is_empty() {
                    self.errors += 1;
                    self.reset();
                }
            }
            rest = &after[ptr..];
            while let Some(&t) = rest.first() {
                if t == 0xff {
                    break; // stuffing to the end of the packet
                }
                let used = self.take(rest, &mut out);
                rest = &rest[used..];
                if !self.buf.is_empty() {
                    break; // continues in the next packet
                }
            }
        } else if !self.buf.is_empty() {
            self.take(rest, &mut out);
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.want = None;
    }

    /// Adds bytes to the section in progress (or starts one); returns how many it used.
    fn take(&mut self, data: &[u8], out: &mut impl FnMut(&[u8])) -> usize {
        let mut used = 0;
        if self.want.is_none() {
            let need = 3usize.saturating_sub(self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..need]);
            used = need;
            if self.buf.len() < 3 {
                return used;
            }
            let len = (((self.buf[1] & 0x0f) as usize) << 8) | self.buf[2] as usize;
            if len < 5 || 3 + len > MAX_SECTION {
                self.errors += 1;
                self.reset();
                return data.len();
            }
            self.want = Some(3 + len);
        }
        let want = self.want.unwrap_or(0);
        let n = (want - self.buf.len()).min(data.len() - used);
        self.buf.extend_from_slice(&data[used..used + n]);
        used += n;
        if self.buf.len() == want {
            // A section with the syntax bit carries a CRC over all of it.
            if self.buf[1] & 0x80 == 0 || crc32(&self.buf) == 0 {
                out(&self.buf);
            } else {
                self.errors += 1;
            }
            self.reset();
        }
        used
    }
}

/// Whether a whole section carries the syntax indicator and its CRC holds (PAT and PMT
/// always do; [`Sections`] passes sections without the indicator on unchecked).
pub fn crc_checked(sec: &[u8]) -> bool {
    sec.len() >= 3 + 5 && sec[1] & 0x80 != 0 && crc32(sec) == 0
}

/// A copy of one whole section in fixed storage ([`MAX_SECTION`] bytes, whatever the input),
/// written back out as TS packets on demand: the segmenter's PAT and PMT for segment heads.
#[derive(Clone)]
pub struct SectionCopy {
    buf: [u8; MAX_SECTION],
    len: usize,
}

impl Default for SectionCopy {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SectionCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SectionCopy")
            .field("len", &self.len)
            .finish()
    }
}

impl SectionCopy {
    pub const fn new() -> Self {
        SectionCopy {
            buf: [0; MAX_SECTION],
            len: 0,
        }
    }

    /// Keeps `sec` (a whole section) in place of the copy held; one longer than
    /// [`MAX_SECTION`] (or empty) is refused and the copy held stays.
    pub fn set(&mut self, sec: &[u8]) -> bool {
        if sec.is_empty() || sec.len() > MAX_SECTION {
            return false;
        }
        self.buf[..sec.len()].copy_from_slice(sec);
        self.len = sec.len();
        true
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Packets [`SectionCopy::write_packets`] writes (at most [`MAX_SECTION_PACKETS`]).
    pub fn packets(&self) -> usize {
        if self.len == 0 {
            0
        } else {
            (self.len + 1).div_ceil(PAYLOAD)
        }
    }

    /// Appends the section to `out` as TS packets on `pid`: the first with
    /// `payload_unit_start` and pointer field 0, the rest continuing it, 0xFF stuffing after
    /// the section; continuity counters `first_cc`, `first_cc + 1`, … (mod 16). No adaptation
    /// field. Returns the number of packets written.
    pub fn write_packets(&self, pid: u16, first_cc: u8, out: &mut Vec<u8>) -> usize {
        let n = self.packets();
        let mut rest = self.bytes();
        for i in 0..n {
            let at = out.len();
            out.resize(at + PACKET, 0xff);
            let p = &mut out[at..at + PACKET];
            let start = if i == 0 { 0x40 } else { 0 };
            p[..4].copy_from_slice(&[
                SYNC,
                start | ((pid >> 8) as u8 & 0x1f),
                pid as u8,
                0x10 | (first_cc.wrapping_add(i as u8) & 0x0f),
            ]);
            let mut at = 4;
            if i == 0 {
                p[4] = 0; // pointer field
                at = 5;
            }
            let k = rest.len().min(PACKET - at);
            p[at..at + k].copy_from_slice(&rest[..k]);
            rest = &rest[k..];
        }
        n
    }
}

/// The programs of a PAT section: `(program_number, pmt_pid)`, the network PID left out.
pub fn parse_pat(sec: &[u8]) -> Option<Vec<(u16, u16)>> {
    if sec.first() != Some(&TABLE_PAT) || sec.len() < 12 {
        return None;
    }
    let body = &sec[8..sec.len() - 4];
    Some(
        body.chunks_exact(4)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u16::from_be_bytes([c[2] & 0x1f, c[3]]),
                )
            })
            .filter(|(prog, _)| *prog != 0)
            .collect(),
    )
}

/// What a PMT says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pmt {
    pub program: u16,
    pub pcr_pid: u16,
    /// `(stream_type, pid)` in table order.
    pub streams: Vec<(u8, u16)>,
}

impl Pmt {
    /// The video stream whose keyframes mark entry points: the first H.264 or HEVC one.
    pub fn video(&self) -> Option<(u8, u16)> {
        self.streams
            .iter()
            .copied()
            .find(|(t, _)| matches!(*t, STREAM_H264 | STREAM_HEVC))
    }
}

pub fn parse_pmt(sec: &[u8]) -> Option<Pmt> {
    if sec.first() != Some(&TABLE_PMT) || sec.len() < 16 {
        return None;
    }
    let end = sec.len() - 4;
    let program = u16::from_be_bytes([sec[3], sec[4]]);
    let pcr_pid = u16::from_be_bytes([sec[8] & 0x1f, sec[9]]);
    let info_len = u16::from_be_bytes([sec[10] & 0x0f, sec[11]]) as usize;
    let mut i = 12 + info_len;
    let mut streams = Vec::new();
    while i + 5 <= end && streams.len() < MAX_STREAMS {
        let st = sec[i];
        let pid = u16::from_be_bytes([sec[i + 1] & 0x1f, sec[i + 2]]);
        let es_len = u16::from_be_bytes([sec[i + 3] & 0x0f, sec[i + 4]]) as usize;
        streams.push((st, pid));
        i += 5 + es_len;
    }
    Some(Pmt {
        program,
        pcr_pid,
        streams,
    })
}

/// The first service name in an SDT (actual) section (service descriptor, tag 0x48).
pub fn parse_sdt_name(sec: &[u8]) -> Option<String> {
    parse_sdt_services(sec).into_iter().next().map(|(_, n)| n)
}

/// Every service of an SDT (actual) section that has a service descriptor with a readable
/// name: `(service_id, name)` in table order, at most [`MAX_SERVICES`], names of at most
/// [`MAX_NAME`] bytes (longer ones, and names that are not UTF-8, are skipped).
pub fn parse_sdt_services(sec: &[u8]) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    if sec.first() != Some(&TABLE_SDT_ACTUAL) || sec.len() < 15 {
        return out;
    }
    let end = sec.len() - 4;
    let mut i = 11;
    while i + 5 <= end && out.len() < MAX_SERVICES {
        let service_id = u16::from_be_bytes([sec[i], sec[i + 1]]);
        let loop_len = u16::from_be_bytes([sec[i + 3] & 0x0f, sec[i + 4]]) as usize;
        let dend = (i + 5 + loop_len).min(end);
        let mut d = i + 5;
        while d + 2 <= dend {
            let (tag, len) = (sec[d], sec[d + 1] as usize);
            let Some(body) = sec.get(d + 2..(d + 2 + len).min(dend)) else {
                break;
            };
            if tag == 0x48 {
                if let Some(name) = service_name(body) {
                    out.push((service_id, name));
                }
                break;
            }
            d += 2 + len;
        }
        i = dend;
    }
    out
}

/// The service name in a service descriptor's body (type, provider, name).
fn service_name(body: &[u8]) -> Option<String> {
    let plen = *body.get(1)? as usize;
    let nlen = *body.get(2 + plen)? as usize;
    let name = body.get(3 + plen..3 + plen + nlen)?;
    // A leading character-table byte (< 0x20) is skipped; the rest must be UTF-8.
    let name = match name.first() {
        Some(&b) if b < 0x20 => &name[1..],
        _ => name,
    };
    (name.len() <= MAX_NAME)
        .then(|| std::str::from_utf8(name).ok().map(str::to_string))
        .flatten()
}

/// One SDT packet (PID 0x11, table 0x42, version `version`) naming one digital-TV service
/// `service_id` of transport stream `ts_id`. The name is cut at [`MAX_NAME`] bytes.
pub fn sdt_packet(ts_id: u16, service_id: u16, name: &str, version: u8) -> [u8; PACKET] {
    sdt_packet_services(ts_id, &[(service_id, name)], version)
}

/// One SDT packet naming `services` (`(service_id, name)`, names cut at [`MAX_NAME`] bytes):
/// the first with provider `coolstream` (the channel a source names), the others with no
/// provider. Services that do not fit in the one packet after the first are left out (with
/// names of 10 characters, 7 fit).
pub fn sdt_packet_services(ts_id: u16, services: &[(u16, &str)], version: u8) -> [u8; PACKET] {
    let mut sec = vec![TABLE_SDT_ACTUAL, 0, 0];
    sec.extend_from_slice(&ts_id.to_be_bytes());
    sec.push(0xc1 | ((version & 0x1f) << 1));
    sec.extend_from_slice(&[0, 0]); // section 0 of 0
    sec.extend_from_slice(&[0xff, 0x01, 0xff]); // original network id 0xff01, reserved
                                                // Pointer field and CRC around the section, in one packet's payload.
    let room = PAYLOAD - 1 - 4;
    for (k, (service_id, name)) in services.iter().take(MAX_SERVICES).enumerate() {
        let name = &name.as_bytes()[..name.len().min(MAX_NAME)];
        let provider: &[u8] = if k == 0 { b"coolstream" } else { b"" };
        let mut desc = vec![0x48, 0, 0x01, provider.len() as u8];
        desc.extend_from_slice(provider);
        desc.push(name.len() as u8);
        desc.extend_from_slice(name);
        desc[1] = (desc.len() - 2) as u8;
        if k > 0 && sec.len() + 5 + desc.len() > room {
            continue;
        }
        sec.extend_from_slice(&service_id.to_be_bytes());
        sec.push(0xfc); // no EIT
        let loop_len = desc.len() as u16;
        sec.push(0x80 | (loop_len >> 8) as u8); // running, not scrambled
        sec.push(loop_len as u8);
        sec.extend_from_slice(&desc);
    }
    let len = sec.len() - 3 + 4;
    sec[1] = 0xf0 | (len >> 8) as u8;
    sec[2] = len as u8;
    let crc = crc32(&sec);
    sec.extend_from_slice(&crc.to_be_bytes());
    let mut p = [0xffu8; PACKET];
    p[..5].copy_from_slice(&[SYNC, 0x40, SDT_PID as u8, 0x10, 0]);
    p[5..5 + sec.len()].copy_from_slice(&sec);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section_packet(pid: u16, sec_without_crc: &[u8], cc: u8) -> [u8; PACKET] {
        let mut sec = sec_without_crc.to_vec();
        let crc = crc32(&sec);
        sec.extend_from_slice(&crc.to_be_bytes());
        let mut p = [0xffu8; PACKET];
        p[..5].copy_from_slice(&[SYNC, 0x40 | (pid >> 8) as u8, pid as u8, 0x10 | cc, 0]);
        p[5..5 + sec.len()].copy_from_slice(&sec);
        p
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        // CRC-32/MPEG-2 of "123456789".
        assert_eq!(crc32(b"123456789"), 0x0376_e6e7);
    }

    #[test]
    fn pat_pmt_and_sdt_round_trip_with_crc_checked() {
        let pat = section_packet(0, &[0, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00], 0);
        let pmt = section_packet(
            0x1000,
            &[
                2, 0xb0, 23, 0, 1, 0xc1, 0, 0, 0xe1, 0, 0xf0, 0, 0x24, 0xe1, 0, 0xf0, 0, 0x0f,
                0xe1, 1, 0xf0, 0,
            ],
            0,
        );
        let mut got = Vec::new();
        Sections::new().push(&pat, |s| got.push(parse_pat(s)));
        assert_eq!(got, vec![Some(vec![(1, 0x1000)])]);
        let mut got = Vec::new();
        Sections::new().push(&pmt, |s| got.push(parse_pmt(s)));
        let p = got[0].clone().unwrap();
        assert_eq!(p.pcr_pid, 0x100);
        assert_eq!(p.streams, vec![(STREAM_HEVC, 0x100), (0x0f, 0x101)]);
        assert_eq!(p.video(), Some((STREAM_HEVC, 0x100)));
        let sdt = sdt_packet(1, 1, "news", 0);
        let mut names = Vec::new();
        Sections::new().push(&sdt, |s| names.push(parse_sdt_name(s)));
        assert_eq!(names, vec![Some("news".to_string())]);
        // Several services (an MPTS): all read back in order, the ones that do not fit left
        // out of the one packet.
        let long = "x".repeat(MAX_NAME);
        let sdt = sdt_packet_services(7, &[(1, "news"), (2, "sport"), (3, &long), (4, &long)], 3);
        let mut services = Vec::new();
        Sections::new().push(&sdt, |s| services = parse_sdt_services(s));
        assert_eq!(
            services,
            vec![
                (1, "news".to_string()),
                (2, "sport".to_string()),
                (3, long.clone())
            ]
        );
        // One flipped bit: the CRC fails, nothing is parsed, the error is counted.
        let mut bad = pat;
        bad[12] ^= 1;
        let mut s = Sections::new();
        let mut n = 0;
        s.push(&bad, |_| n += 1);
        assert_eq!((n, s.errors), (0, 1));
    }

    #[test]
    fn sections_span_packets_and_lost_packets_cut_them() {
        // A 300-byte private section with the syntax bit and a CRC, over two packets.
        let mut sec = vec![0x80, 0xb0, 0, 0, 1, 0xc1, 0, 0];
        sec.extend((0..288).map(|i| i as u8));
        let len = sec.len() - 3 + 4;
        sec[1] = 0xb0 | (len >> 8) as u8;
        sec[2] = len as u8;
        let crc = crc32(&sec);
        sec.extend_from_slice(&crc.to_be_bytes());
        let mut a = [0xffu8; PACKET];
        a[..5].copy_from_slice(&[SYNC, 0x41, 0x00, 0x10, 0]);
        a[5..].copy_from_slice(&sec[..183]);
        let mut b = [0xffu8; PACKET];
        b[..4].copy_from_slice(&[SYNC, 0x01, 0x00, 0x11]);
        b[4..4 + sec.len() - 183].copy_from_slice(&sec[183..]);
        let mut s = Sections::new();
        let mut got = Vec::new();
        s.push(&a, |x| got.push(x.to_vec()));
        s.push(&b, |x| got.push(x.to_vec()));
        assert_eq!(got, vec![sec.clone()]);
        // The second packet lost (the next one has a later CC): nothing, one error.
        let mut c = b;
        c[3] = 0x12;
        let mut s = Sections::new();
        let mut n = 0;
        s.push(&a, |_| n += 1);
        let mut c2 = c;
        c2[1] = 0x01; // no payload unit start
        s.push(&c2, |_| n += 1);
        assert_eq!(n, 0);
        assert_eq!(s.errors, 1);
    }

    #[test]
    fn section_copies_are_written_back_whole_in_fixed_storage() {
        let mut copy = SectionCopy::new();
        assert_eq!(copy.packets(), 0);
        for len in [12, 182, 183, 184, 366, 367, 368, 551, 1000, MAX_SECTION] {
            // A private section with the syntax bit, `len` bytes with its CRC.
            let mut sec = vec![0x80, 0, 0, 0, 1, 0xc1, 0, 0];
            sec.extend((8..len - 4).map(|i| (i * 7) as u8));
            sec[1] = 0xb0 | ((len - 3) >> 8) as u8;
            sec[2] = (len - 3) as u8;
            let crc = crc32(&sec);
            sec.extend_from_slice(&crc.to_be_bytes());
            assert!(crc_checked(&sec));
            assert!(copy.set(&sec));
            assert_eq!(copy.bytes(), &sec[..]);
            let mut out = Vec::new();
            let n = copy.write_packets(0x1fe0, 14, &mut out);
            assert_eq!(n, (len + 1).div_ceil(184));
            assert!(n <= MAX_SECTION_PACKETS);
            assert_eq!(out.len(), n * PACKET);
            let mut s = Sections::new();
            let mut got = Vec::new();
            for (i, p) in out.chunks(PACKET).enumerate() {
                assert_eq!(ts::pid(p), 0x1fe0);
                assert_eq!(ts::cc(p), (14 + i as u8) & 0x0f);
                assert_eq!(ts::payload_unit_start(p), i == 0);
                s.push(p.try_into().unwrap(), |x| got.push(x.to_vec()));
            }
            assert_eq!((got, s.errors), (vec![sec.clone()], 0), "{len}");
            assert_eq!(out[4], 0, "pointer field");
            let tail = (len + 1) % 184;
            if tail != 0 {
                assert!(out[out.len() - (184 - tail)..].iter().all(|&b| b == 0xff));
            }
        }
        assert_eq!(MAX_SECTION_PACKETS, 6);
        // Too long or empty: refused, the copy held stays.
        assert!(!copy.set(&[0u8; MAX_SECTION + 1]));
        assert!(!copy.set(&[]));
        assert_eq!(copy.bytes().len(), MAX_SECTION);
        // Without the syntax bit a section is passed on unchecked: not CRC-checked.
        assert!(!crc_checked(&[0x00, 0x30, 5, 0, 1, 0xc1, 0, 0]));
    }

    #[test]
    fn random_sections_never_panic() {
        let mut rng = crate::proto::rng::Rng::new(5);
        let mut s = Sections::new();
        for _ in 0..50_000 {
            let mut p = [0u8; PACKET];
            for b in p.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            p[0] = SYNC;
            s.push(&p, |sec| {
                let _ = parse_pat(sec);
                let _ = parse_pmt(sec);
                let _ = parse_sdt_name(sec);
            });
            // Random bytes as a section body too (the CRC check is bypassed here).
            let _ = parse_pat(&p[4..]);
            let _ = parse_pmt(&p[4..]);
            let _ = parse_sdt_name(&p[4..]);
        }
    }
}
