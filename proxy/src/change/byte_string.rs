//! A byte string as serde bytes rather than as a sequence of `u8`: postcard
//! encodes both alike (a length, then the bytes), so records written either way
//! read either way, but bytes are read with one copy where a sequence took a call
//! per byte. Reading 1 KB strings from the embedded store that call was 16% of the
//! proxy's CPU (`redis-benchmark -t get -d 1024 -P 16`).

use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(ByteString)
}

struct ByteString;

impl<'de> Visitor<'de> for ByteString {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    /// Formats without a bytes type (JSON) write a sequence.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    /// The encoding records were written in before.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Before {
        String(Vec<u8>),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Now {
        String(#[serde(with = "super")] Vec<u8>),
    }

    #[test]
    fn byte_strings_encode_as_before_and_read_both_ways() {
        for len in [0usize, 1, 127, 128, 1024, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let before = postcard::to_stdvec(&Before::String(bytes.clone())).unwrap();
            let now = postcard::to_stdvec(&Now::String(bytes.clone())).unwrap();
            assert_eq!(before, now, "{len} bytes encode differently");
            assert_eq!(
                postcard::from_bytes::<Now>(&before).unwrap(),
                Now::String(bytes.clone())
            );
            let json = serde_json::to_string(&Now::String(bytes.clone())).unwrap();
            assert_eq!(
                serde_json::from_str::<Now>(&json).unwrap(),
                Now::String(bytes)
            );
        }
        assert!(
            postcard::from_bytes::<Now>(&[0, 5, 1, 2]).is_err(),
            "a short string is refused"
        );
    }
}
