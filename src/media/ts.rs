//! MPEG-TS packets: 188 bytes, sync byte 0x47. Alignment recovery over a byte stream, and the
//! few header fields the segmenter and the pacer read (PID, payload start, adaptation field
//! flags, PCR, PAT).

pub const PACKET: usize = 188;
pub const SYNC: u8 = 0x47;
/// PCR ticks per second (27 MHz).
pub const PCR_HZ: u64 = 27_000_000;
/// PCR wraps at 2^33 * 300 ticks (about 26.5 hours).
pub const PCR_WRAP: u64 = (1 << 33) * 300;

/// Finds packet boundaries in a byte stream that may hold garbage or lose bytes.
///
/// A 0x47 counts as a boundary only if another 0x47 follows one packet later (so a stray 0x47
/// in garbage, or a torn packet, is skipped); otherwise the search moves on one byte. So the
/// last packet of a chunk waits for the next chunk (one datagram's delay on a live input), or
/// for [`Resync::finish`] at the end of the input. At most two packets' worth is carried.
#[derive(Default, Debug)]
pub struct Resync {
    carry: Vec<u8>,
    locked: bool,
    skipped: u64,
}

impl Resync {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes dropped as garbage so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Forgets the carried bytes (after a seek or a loop).
    pub fn reset(&mut self) {
        self.carry.clear();
        self.locked = false;
    }

    /// At the end of the input: the last packet, if one whole packet in sync is left.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.locked && self.carry.len() == PACKET && self.carry[0] == SYNC {
            out.extend_from_slice(&self.carry);
        }
        self.carry.clear();
        self.locked = false;
    }

    /// Feeds `data`; appends whole, aligned packets to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.carry.extend_from_slice(data);
        let buf = &self.carry;
        let mut i = 0;
        while buf.len() - i >= PACKET {
            if buf[i] == SYNC {
                // Confirmed by the next packet's sync byte; with nothing after it yet, wait
                // for more bytes (a torn packet would otherwise pass as whole).
                let confirmed = match buf.get(i + PACKET) {
                    Some(&b) => b == SYNC,
                    None => break,
                };
                if confirmed {
                    out.extend_from_slice(&buf[i..i + PACKET]);
                    i += PACKET;
                    self.locked = true;
                    continue;
                }
            }
            self.locked = false;
            self.skipped += 1;
            i += 1;
        }
        self.carry.drain(..i);
    }
}

pub fn pid(p: &[u8]) -> u16 {
    (((p[1] & 0x1f) as u16) << 8) | p[2] as u16
}

pub fn payload_unit_start(p: &[u8]) -> bool {
    p[1] & 0x40 != 0
}

/// The continuity counter (4 bits; counts packets with payload, per PID).
pub fn cc(p: &[u8]) -> u8 {
    p[3] & 0x0f
}

pub fn set_cc(p: &mut [u8], cc: u8) {
    p[3] = (p[3] & 0xf0) | (cc & 0x0f);
}

/// Whether the packet carries payload (only those advance the continuity counter).
pub fn has_payload(p: &[u8]) -> bool {
    p[3] & 0x10 != 0
}

/// The transport error indicator: a demodulator upstream could not correct this packet.
pub fn transport_error(p: &[u8]) -> bool {
    p[1] & 0x80 != 0
}

/// The discontinuity indicator: the continuity counter (and the clock) may jump here.
pub fn discontinuity(p: &[u8]) -> bool {
    af_flags(p).is_some_and(|f| f & 0x80 != 0)
}

/// PID of null (stuffing) packets.
pub const NULL_PID: u16 = 0x1fff;

/// An adaptation-field-only packet on `pid` that says "discontinuity here": continuity
/// counters (and clocks) may jump. It carries no payload, so its `cc` is the one the PID's
/// previous packet should have had: the next payload packet continues from it.
pub fn discontinuity_packet(pid: u16, cc: u8) -> [u8; PACKET] {
    let mut p = [0xffu8; PACKET];
    p[0] = SYNC;
    p[1] = ((pid >> 8) as u8) & 0x1f;
    p[2] = pid as u8;
    p[3] = 0x20 | (cc & 0x0f);
    p[4] = 183;
    p[5] = 0x80;
    p
}

/// The elementary-stream bytes after the PES header, in a packet that starts a PES.
pub fn pes_payload(p: &[u8]) -> Option<&[u8]> {
    if !payload_unit_start(p) {
        return None;
    }
    let pl = payload(p)?;
    if pl.len() < 9 || pl[..3] != [0, 0, 1] {
        return None;
    }
    pl.get(9 + pl[8] as usize..)
}

/// The adaptation field's flags byte, if the packet has one with at least that byte.
fn af_flags(p: &[u8]) -> Option<u8> {
    let afc = (p[3] >> 4) & 3;
    if afc & 2 == 0 || p[4] == 0 {
        return None;
    }
    Some(p[5])
}

/// The random access indicator: the muxer marks where a decoder can start (a keyframe).
pub fn random_access(p: &[u8]) -> bool {
    af_flags(p).is_some_and(|f| f & 0x40 != 0)
}

/// The PCR in 27 MHz ticks, if this packet carries one.
pub fn pcr(p: &[u8]) -> Option<u64> {
    let f = af_flags(p)?;
    if f & 0x10 == 0 || p[4] < 7 {
        return None;
    }
    let b = &p[6..12];
    let base = ((b[0] as u64) << 25)
        | ((b[1] as u64) << 17)
        | ((b[2] as u64) << 9)
        | ((b[3] as u64) << 1)
        | ((b[4] as u64) >> 7);
    let ext = (((b[4] & 1) as u64) << 8) | b[5] as u64;
    Some(base * 300 + ext)
}

/// Ticks from `earlier` to `later`, across the wrap.
pub fn pcr_delta(earlier: u64, later: u64) -> u64 {
    (later + PCR_WRAP - earlier) % PCR_WRAP
}

/// The payload of a packet (after the header and any adaptation field).
pub fn payload(p: &[u8]) -> Option<&[u8]> {
    let afc = (p[3] >> 4) & 3;
    let mut start = 4;
    if afc & 2 != 0 {
        start += 1 + p[4] as usize;
    }
    if afc & 1 == 0 || start >= PACKET {
        return None;
    }
    Some(&p[start..])
}

/// The PMT PID of the first program in a PAT packet (PID 0, section starting in this packet).
pub fn pat_first_pmt(p: &[u8]) -> Option<u16> {
    if pid(p) != 0 || !payload_unit_start(p) {
        return None;
    }
    let pl = payload(p)?;
    let ptr = *pl.first()? as usize;
    let sec = pl.get(1 + ptr..)?;
    if *sec.first()? != 0 {
        return None;
    }
    let len = ((((*sec.get(1)? & 0x0f) as usize) << 8) | *sec.get(2)? as usize).min(sec.len());
    // Programs from byte 8 up to the CRC.
    let mut i = 8;
    while i + 4 <= len.saturating_sub(1) {
        let prog = u16::from_be_bytes([sec[i], sec[i + 1]]);
        let pmt = (((sec[i + 2] & 0x1f) as u16) << 8) | sec[i + 3] as u16;
        if prog != 0 {
            return Some(pmt);
        }
        i += 4;
    }
    None
}

/// PTS/DTS clock: 90 kHz, 33 bits.
pub const TS_WRAP: u64 = 1 << 33;

/// Where the PTS and DTS of a PES header starting in this packet are (byte offsets).
fn pes_timestamp_offsets(p: &[u8]) -> (Option<usize>, Option<usize>) {
    if !payload_unit_start(p) {
        return (None, None);
    }
    let afc = (p[3] >> 4) & 3;
    let mut i = 4;
    if afc & 2 != 0 {
        i += 1 + p[4] as usize;
    }
    if afc & 1 == 0 || i + 14 > PACKET {
        return (None, None);
    }
    let pl = &p[i..];
    // Start code, and a stream with the optional PES header ('10' marker bits).
    if pl[..3] != [0, 0, 1] || pl[6] & 0xc0 != 0x80 {
        return (None, None);
    }
    match pl[7] >> 6 {
        2 => (Some(i + 9), None),
        3 if i + 19 <= PACKET => (Some(i + 9), Some(i + 14)),
        _ => (None, None),
    }
}

fn read_ts(b: &[u8]) -> u64 {
    (((b[0] >> 1) & 7) as u64) << 30
        | (b[1] as u64) << 22
        | ((b[2] >> 1) as u64) << 15
        | (b[3] as u64) << 7
        | (b[4] >> 1) as u64
}

fn write_ts(b: &mut [u8], v: u64) {
    let v = v % TS_WRAP;
    b[0] = (b[0] & 0xf0) | (((v >> 30) as u8 & 7) << 1) | 1;
    b[1] = (v >> 22) as u8;
    b[2] = (((v >> 15) as u8) << 1) | 1;
    b[3] = (v >> 7) as u8;
    b[4] = ((v as u8) << 1) | 1;
}

/// The PTS and DTS (90 kHz) of a PES header starting in this packet.
pub fn pes_timestamps(p: &[u8]) -> (Option<u64>, Option<u64>) {
    let (pts, dts) = pes_timestamp_offsets(p);
    (pts.map(|i| read_ts(&p[i..])), dts.map(|i| read_ts(&p[i..])))
}

/// Shifts every clock in the packet (PCR, PTS, DTS) by `offset` 90 kHz ticks, wrapping.
pub fn restamp(p: &mut [u8], offset: u64) {
    if offset == 0 {
        return;
    }
    if let Some(v) = pcr(p) {
        let base = (v / 300 + offset) % TS_WRAP;
        let ext = v % 300;
        p[6] = (base >> 25) as u8;
        p[7] = (base >> 17) as u8;
        p[8] = (base >> 9) as u8;
        p[9] = (base >> 1) as u8;
        p[10] = (((base & 1) as u8) << 7) | (p[10] & 0x7e) | ((ext >> 8) as u8 & 1);
        p[11] = ext as u8;
    }
    let (pts, dts) = pes_timestamp_offsets(p);
    for i in [pts, dts].into_iter().flatten() {
        let v = read_ts(&p[i..]);
        write_ts(&mut p[i..], v + offset);
    }
}

/// A packet with PCR (for tests and the demo asset's checks).
pub fn packet_with_pcr(pid: u16, pcr: u64, random_access: bool) -> [u8; PACKET] {
    let mut p = [0xffu8; PACKET];
    p[0] = SYNC;
    p[1] = ((pid >> 8) as u8) & 0x1f;
    p[2] = pid as u8;
    p[3] = 0x20; // adaptation field only
    p[4] = 183;
    p[5] = 0x10 | if random_access { 0x40 } else { 0 };
    let base = pcr / 300;
    let ext = pcr % 300;
    p[6] = (base >> 25) as u8;
    p[7] = (base >> 17) as u8;
    p[8] = (base >> 9) as u8;
    p[9] = (base >> 1) as u8;
    p[10] = (((base & 1) as u8) << 7) | 0x7e | ((ext >> 8) as u8 & 1);
    p[11] = ext as u8;
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(pid: u16, fill: u8) -> [u8; PACKET] {
        let mut p = [fill; PACKET];
        p[0] = SYNC;
        p[1] = (pid >> 8) as u8 & 0x1f;
        p[2] = pid as u8;
        p[3] = 0x10;
        p
    }

    #[test]
    fn resync_skips_garbage_and_survives_any_split() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&[1, 2, SYNC, 4, 5]); // garbage with a stray sync byte
        for k in 0..5 {
            stream.extend_from_slice(&pkt(100 + k, 0x11));
        }
        stream.extend_from_slice(&[SYNC, 9, 9]); // a torn packet
        for k in 0..3 {
            stream.extend_from_slice(&pkt(200 + k, 0x22));
        }
        for chunk in [1usize, 7, 188, 1000] {
            let mut r = Resync::new();
            let mut out = Vec::new();
            for c in stream.chunks(chunk) {
                r.push(c, &mut out);
            }
            // The last packet comes out at the end of the input.
            r.push(&pkt(300, 0x33), &mut out);
            r.finish(&mut out);
            let pids: Vec<u16> = out.chunks(PACKET).map(pid).collect();
            assert_eq!(
                pids,
                vec![100, 101, 102, 103, 104, 200, 201, 202, 300],
                "{chunk}"
            );
            assert_eq!(r.skipped(), 5 + 3);
        }
    }

    #[test]
    fn pcr_round_trips_and_wraps() {
        for v in [0u64, 1, 299, 300, 27_000_000 * 3600 + 17, PCR_WRAP - 1] {
            let p = packet_with_pcr(256, v, true);
            assert_eq!(pcr(&p), Some(v));
            assert!(random_access(&p));
        }
        assert_eq!(pcr(&pkt(5, 0)), None);
        assert_eq!(pcr_delta(PCR_WRAP - 10, 5), 15);
    }

    #[test]
    fn restamping_shifts_pcr_pts_and_dts() {
        let mut p = [0xffu8; PACKET];
        p[..4].copy_from_slice(&[SYNC, 0x41, 0x00, 0x10]);
        // PES: start code, video stream, length 0, '10' flags, PTS+DTS, header length 10.
        p[4..13].copy_from_slice(&[0, 0, 1, 0xe0, 0, 0, 0x80, 0xc0, 10]);
        p[13] = 0x30;
        write_ts(&mut p[13..], 900_000);
        p[18] = 0x10;
        write_ts(&mut p[18..], 896_400);
        assert_eq!(pes_timestamps(&p), (Some(900_000), Some(896_400)));
        restamp(&mut p, 90_000);
        assert_eq!(pes_timestamps(&p), (Some(990_000), Some(986_400)));
        assert_eq!(p[13] >> 4, 3, "the PTS prefix nibble is kept");
        restamp(&mut p, TS_WRAP - 990_000);
        assert_eq!(pes_timestamps(&p).0, Some(0));
        let mut q = packet_with_pcr(256, 27_000_000 + 7, true);
        restamp(&mut q, 90_000);
        assert_eq!(pcr(&q), Some(27_000_000 + 27_000_000 + 7));
        assert!(random_access(&q));
    }

    #[test]
    fn pat_names_the_pmt() {
        let mut p = [0xffu8; PACKET];
        p[..4].copy_from_slice(&[SYNC, 0x40, 0x00, 0x10]);
        // pointer, table 0, length 13, ts id, version, sections, program 1 -> PMT 0x1000, CRC
        let sec = [
            0, 0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00, 1, 2, 3, 4,
        ];
        p[4..4 + sec.len()].copy_from_slice(&sec);
        assert_eq!(pat_first_pmt(&p), Some(0x1000));
        assert_eq!(pat_first_pmt(&pkt(0, 0)), None);
    }
}
