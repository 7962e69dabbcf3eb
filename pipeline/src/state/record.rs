//! The byte format of the records processors keep in their stores.
//!
//! A record is [`FORMAT_POSTCARD`] and then postcard (compact, positional serde). Records
//! written by versions before it are JSON, which never starts with that byte, and still
//! read. A record that reads as neither is [`StateError::Unreadable`]: never "no state",
//! which would let a processor silently start a key over.
//!
//! Postcard is positional: a state struct whose fields change cannot read records written
//! before. Evolve one by a new format byte, and keep reading the old one.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StateError;

/// The first byte of a postcard record.
const FORMAT_POSTCARD: u8 = 0x01;

/// Serialises a state record.
pub fn encode_state<T: Serialize>(value: &T) -> Vec<u8> {
    // Postcard fails only on sequences of unknown length, which derived state structs
    // never have; an empty record would read back as `Unreadable`, not as empty state.
    postcard::to_extend(value, vec![FORMAT_POSTCARD]).unwrap_or_default()
}

/// Reads the record `bytes` that `store` holds for `key`.
pub fn decode_state<T: DeserializeOwned>(
    store: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StateError> {
    let unreadable = |reason: String| StateError::Unreadable {
        store: store.to_string(),
        key: key.iter().map(|b| format!("{b:02x}")).collect(),
        reason,
    };
    match bytes.split_first() {
        Some((&FORMAT_POSTCARD, rest)) => {
            postcard::from_bytes(rest).map_err(|e| unreadable(e.to_string()))
        }
        _ => serde_json::from_slice(bytes).map_err(|e| unreadable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Stats {
        count: u64,
        codes: Vec<String>,
    }

    #[test]
    fn records_round_trip_and_json_ones_from_before_still_read() {
        let stats = Stats {
            count: 7,
            codes: vec!["J06.9".into()],
        };
        let bytes = encode_state(&stats);
        assert_eq!(bytes[0], FORMAT_POSTCARD);
        assert_eq!(decode_state::<Stats>("s", b"k", &bytes).unwrap(), stats);
        let json = serde_json::to_vec(&stats).unwrap();
        assert_eq!(decode_state::<Stats>("s", b"k", &json).unwrap(), stats);
    }

    #[test]
    fn an_unreadable_record_is_an_error_naming_store_and_key() {
        for bytes in [&[FORMAT_POSTCARD, 0xff][..], b"{\"count\": \"seven\"}", b""] {
            let err = decode_state::<Stats>("amounts", &[0, 1, 0xab], bytes).unwrap_err();
            let StateError::Unreadable { store, key, .. } = &err else {
                panic!("expected Unreadable, got {err:?}");
            };
            assert_eq!((store.as_str(), key.as_str()), ("amounts", "0001ab"));
            assert!(err.to_string().contains("strata replay"), "{err}");
        }
    }
}
