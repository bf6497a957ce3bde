//! The bytes of a segment: its magic, and records with their headers.
//!
//! Format 2 (written now): `[length u32 LE][payload crc32 u32 LE][header crc32 u32
//! LE][payload]`, the header checksum covering the length and the payload checksum.
//! Format 1 (still read): `[length u32 LE][payload crc32 u32 LE][payload]`.
//!
//! The header checksum is what tells a torn write from damage. A crash can only
//! cut what was written last, so a bad record is a torn tail only if no intact
//! record follows it; in format 2 an intact record is recognised at any offset by
//! its header checksum alone, so the scan for one is cheap, and a damaged length
//! (which in format 1 looked like a record running past the end of the file) can
//! no longer pass for a torn write.

use super::MAX_RECORD;

/// A segment's first bytes: `MRDNLOG` and the format digit.
pub(crate) const MAGIC_LEN: usize = 8;
const MAGIC_V1: &[u8; MAGIC_LEN] = b"MRDNLOG1";
const MAGIC_V2: &[u8; MAGIC_LEN] = b"MRDNLOG2";

/// A segment's record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// No header checksum (segments written before format 2).
    V1,
    /// A checksum over each record's header.
    V2,
}

impl Format {
    /// The format new segments are written in.
    pub(crate) const CURRENT: Format = Format::V2;

    /// The format a segment's magic names.
    pub(crate) fn of(magic: &[u8]) -> Option<Format> {
        match magic.get(..MAGIC_LEN)? {
            m if m == MAGIC_V1 => Some(Format::V1),
            m if m == MAGIC_V2 => Some(Format::V2),
            _ => None,
        }
    }

    /// The magic a segment of this format starts with.
    pub(crate) fn magic(self) -> &'static [u8; MAGIC_LEN] {
        match self {
            Format::V1 => MAGIC_V1,
            Format::V2 => MAGIC_V2,
        }
    }

    /// Bytes of a record's header.
    pub(crate) fn header_len(self) -> usize {
        match self {
            Format::V1 => 8,
            Format::V2 => 12,
        }
    }
}

/// Appends a record of the current format.
#[cfg(test)]
pub(crate) fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    encode_with(out, |out| out.extend_from_slice(payload));
}

/// Appends a record of the current format whose payload `write` appends to `out`
/// (no copy of it made first); returns the payload's length.
pub(crate) fn encode_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    let header = Format::CURRENT.header_len();
    out.resize(start + header, 0);
    write(out);
    let len = out.len() - start - header;
    let crc = crc32fast::hash(&out[start + header..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[start..start + 8]);
    out[start + 8..start + 12].copy_from_slice(&header_crc.to_le_bytes());
    len
}

/// How the bytes at a record boundary read.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// A whole, intact record's payload.
    Record(&'a [u8]),
    /// The bytes end inside the record: a torn tail, if nothing intact follows.
    Incomplete(String),
    /// The header's checksum is wrong (format 2): a torn tail, if nothing intact
    /// follows, else a damaged length or checksum.
    BadHeader(String),
    /// The record is whole but its checksum is wrong, and nothing follows it.
    LastBadChecksum(String),
    /// Damage that cannot be a torn write.
    Corrupt(String),
}

/// Reads the record at the front of `rest`.
pub(crate) fn parse(rest: &[u8], format: Format) -> Parsed<'_> {
    let header = format.header_len();
    if rest.len() < header {
        return Parsed::Incomplete("record header cut short".into());
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if format == Format::V2 {
        let header_crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if crc32fast::hash(&rest[..8]) != header_crc {
            return Parsed::BadHeader("record header checksum mismatch".into());
        }
    }
    if len > MAX_RECORD {
        return Parsed::Corrupt(format!("record length {len} is over the limit"));
    }
    let end = header + len;
    if rest.len() < end {
        return Parsed::Incomplete(format!("record of {len} bytes cut short"));
    }
    let payload = &rest[header..end];
    if crc32fast::hash(payload) == crc {
        Parsed::Record(payload)
    } else if rest.len() == end {
        Parsed::LastBadChecksum("checksum mismatch".into())
    } else {
        Parsed::Corrupt("checksum mismatch".into())
    }
}

/// The offset of the first intact record at or after `from` (format 2), if any.
/// Each offset costs a checksum of eight bytes; only an offset whose header
/// checks out has its payload checked.
pub(crate) fn intact_record_after(bytes: &[u8], from: usize) -> Option<usize> {
    let header = Format::V2.header_len();
    (from..bytes.len().saturating_sub(header - 1)).find(|&at| {
        let h = &bytes[at..at + header];
        let header_crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        crc32fast::hash(&h[..8]) == header_crc
            && matches!(parse(&bytes[at..], Format::V2), Parsed::Record(_))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_length_is_caught_by_the_header_checksum() {
        let mut bytes = Vec::new();
        encode(&mut bytes, b"first");
        encode(&mut bytes, b"second");
        assert!(matches!(
            parse(&bytes, Format::V2),
            Parsed::Record(b"first")
        ));
        bytes[3] ^= 0x40;
        assert!(matches!(parse(&bytes, Format::V2), Parsed::BadHeader(_)));
        assert_eq!(intact_record_after(&bytes, 1), Some(12 + 5));
        // Zeros (a file extended by a crash) are never an intact record.
        assert_eq!(intact_record_after(&[0u8; 64], 0), None);
    }
}
