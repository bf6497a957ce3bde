//! LEB128 unsigned integers: the compact integer form of our binary encodings.

/// Appends `value` as an unsigned LEB128 integer.
pub(crate) fn put(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ended inside the integer.
    Truncated,
    /// More than 64 bits, or a non-minimal encoding.
    Invalid,
}

/// Reads one unsigned LEB128 integer from the front of `input`, advancing it.
/// Only the minimal encoding is accepted, so every value has exactly one form.
pub(crate) fn take(input: &mut &[u8]) -> Result<u64, VarintError> {
    let mut value: u64 = 0;
    for (i, &byte) in input.iter().enumerate() {
        let shift = 7 * i as u32;
        let bits = u64::from(byte & 0x7f);
        if shift >= 64 || (shift == 63 && bits > 1) {
            return Err(VarintError::Invalid);
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(VarintError::Invalid);
            }
            *input = &input[i + 1..];
            return Ok(value);
        }
    }
    Err(VarintError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(v: u64) {
            let mut buf = Vec::new();
            put(&mut buf, v);
            let mut slice = buf.as_slice();
            prop_assert_eq!(take(&mut slice), Ok(v));
            prop_assert!(slice.is_empty());
        }
    }

    #[test]
    fn rejects_overlong_and_truncated() {
        assert_eq!(take(&mut &[0x80, 0x00][..]), Err(VarintError::Invalid));
        assert_eq!(take(&mut &[0x80][..]), Err(VarintError::Truncated));
        assert_eq!(take(&mut &[0xff; 11][..]), Err(VarintError::Invalid));
        assert_eq!(
            take(&mut &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..]),
            Err(VarintError::Invalid)
        );
    }
}
