//! RTP unwrapping (RFC 3550) for MPEG-TS over RTP (RFC 2250): the fixed header, CSRCs, a header
//! extension and padding are stripped. A datagram that starts with the TS sync byte is taken
//! as bare TS, so one port accepts both.

use super::ts::SYNC;

/// The TS payload of a datagram, or `None` if it is neither RTP nor TS.
pub fn payload(d: &[u8]) -> Option<&[u8]> {
    let first = *d.first()?;
    if first == SYNC {
        return Some(d);
    }
    if first >> 6 != 2 || d.len() < 12 {
        return None;
    }
    let csrc = (first & 0x0f) as usize;
    let mut start = 12 + 4 * csrc;
    if first & 0x10 != 0 {
        let ext = d.get(start..start + 4)?;
        let words = u16::from_be_bytes([ext[2], ext[3]]) as usize;
        start += 4 + 4 * words;
    }
    let mut end = d.len();
    if first & 0x20 != 0 {
        let pad = *d.last()? as usize;
        if pad == 0 {
            return None;
        }
        end = end.checked_sub(pad)?;
    }
    if start > end {
        return None;
    }
    Some(&d[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_header_csrcs_extension_and_padding() {
        let ts = [SYNC; 188];
        // Plain header.
        let mut d = vec![0x80, 33, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        d.extend_from_slice(&ts);
        assert_eq!(payload(&d), Some(&ts[..]));
        // Two CSRCs, an extension of one word, and three bytes of padding.
        let mut d = vec![0x80 | 0x20 | 0x10 | 2, 33, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        d.extend_from_slice(&[0; 8]);
        d.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]);
        d.extend_from_slice(&ts);
        d.extend_from_slice(&[0, 0, 3]);
        assert_eq!(payload(&d), Some(&ts[..]));
        // Bare TS passes through.
        assert_eq!(payload(&ts), Some(&ts[..]));
    }

    #[test]
    fn malformed_datagrams_are_refused_not_panicked_on() {
        assert_eq!(payload(&[]), None);
        assert_eq!(payload(&[0x80, 33, 0]), None);
        // Claims 15 CSRCs it does not carry.
        assert_eq!(payload(&[0x8f; 20]), None);
        // Extension longer than the datagram.
        let d = [0x90, 33, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        assert_eq!(payload(&d), None);
        // Padding longer than the datagram.
        let d = [0xa0, 33, 0, 1, 0, 0, 0, 0, 0, 0, 0, 200];
        assert_eq!(payload(&d), None);
        // Version 1.
        assert_eq!(payload(&[0x40; 40]), None);
    }
}
