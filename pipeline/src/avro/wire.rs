//! The Confluent wire format: magic byte 0, the schema id as a 4-byte big-endian
//! integer, then the Avro binary datum.

/// Bytes before the Avro datum.
pub const HEADER_LEN: usize = 5;
pub const MAGIC: u8 = 0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the record has {len} bytes, fewer than the 5-byte Confluent header (magic byte + schema id); it was cut short or is not Avro from a schema-registry serializer")]
    Truncated { len: usize },
    #[error("the record starts with byte {found:#04x}, not the Confluent magic byte 0x00; it was not written by a schema-registry Avro serializer")]
    BadMagic { found: u8 },
}

/// Splits a framed record into its schema id and Avro payload.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), WireError> {
    if bytes.len() < HEADER_LEN {
        return Err(WireError::Truncated { len: bytes.len() });
    }
    if bytes[0] != MAGIC {
        return Err(WireError::BadMagic { found: bytes[0] });
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Writes the header for schema `id` into `out`.
pub fn write_header(id: u32, out: &mut Vec<u8>) {
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_frames() {
        let mut buf = Vec::new();
        write_header(0x0102_0304, &mut buf);
        buf.extend_from_slice(b"xy");
        assert_eq!(split(&buf), Ok((0x0102_0304, &b"xy"[..])));
        assert_eq!(split(&buf[..3]), Err(WireError::Truncated { len: 3 }));
        buf[0] = 7;
        assert_eq!(split(&buf), Err(WireError::BadMagic { found: 7 }));
    }
}
