//! Protection of sensitive columns on their way to the cloud tiers (hot and warm); the
//! cold tier stays on premise and keeps them.
//!
//! - `drop`: the column becomes NULL.
//! - `tokenize`: text becomes `tok:` + hex of HMAC-SHA256(key, text) (first 16 bytes):
//!   equal values give equal tokens, so joins and duplicate checks still work; not
//!   reversible.
//! - `encrypt`: text becomes `enc:<key id>:` + base64(nonce ‖ AES-256-GCM ciphertext ‖
//!   tag). The nonce is derived from the key, the event's position and the column, so a
//!   replay writes the same bytes (tiering is deterministic); a nonce repeats only for the
//!   same (position, column), which holds the same plaintext. Decrypting needs the key
//!   the key id names.
//!
//! Keys come from a file or an environment variable (`key_file` / `key_env`). Rotation:
//! a new `key_id` with its new key encrypts from then on, and the old key listed under
//! `retired_keys` still decrypts what was written under its id ([`Keyring`]).
//!
//! Text arrays are protected element by element. A column whose type cannot carry text
//! (a date, a number) is dropped in every mode: its Avro type stays as it was.

use apache_avro::types::Value;
use base64::Engine;
use ring::{aead, hmac};

use super::config::{PiiMode, PiiPolicy};

#[derive(Debug, thiserror::Error)]
pub enum PiiKeyError {
    #[error("pii.key_file `{path}`: {source}; write 32 random bytes (or 64 hex digits) there, readable only by Strata")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pii.key_file `{path}` holds {len} bytes; it needs a 32-byte key (raw, or 64 hex digits)"
    )]
    Length { path: String, len: usize },
    #[error("pii mode `{0}` needs pii.key_file or pii.key_env (and `encrypt` a pii.key_id)")]
    Missing(&'static str),
    #[error("environment variable `{name}` (pii key) is not set or not 64 hex digits")]
    Env { name: String },
    #[error("no key with id `{0}`: list it under pii.retired_keys to decrypt what it wrote")]
    UnknownKey(String),
    #[error("not a value Strata encrypted, or it was altered (authentication failed)")]
    Corrupt,
}

/// The text values of a row's sensitive `columns` (array elements one by one), as an
/// analysis's reason texts could quote them.
pub fn sensitive_texts(row: &[(String, Value)], columns: &[String]) -> Vec<String> {
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Union(_, inner) => collect(inner, out),
            Value::String(s) if s.chars().count() >= MIN_QUOTED => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (name, value) in row {
        if columns.contains(name) {
            collect(value, &mut out);
        }
    }
    out
}

/// Shorter values are not looked for in reason texts: they would match ordinary words.
const MIN_QUOTED: usize = 3;

/// `analysis` as it may leave for a cloud tier: a reason whose text quotes one of
/// `sensitive` keeps its code and contribution, and its text says it was withheld.
/// Claim analysis names no sensitive value in its reasons; this keeps any that slips
/// in (a new rule, an older record in state) on premise.
pub fn withhold_quoted(analysis: &Value, sensitive: &[String]) -> Value {
    let Value::Record(fields) = analysis else {
        return analysis.clone();
    };
    let quotes = |text: &str| sensitive.iter().any(|s| text.contains(s.as_str()));
    let reason = |r: &Value| match r {
        Value::Record(parts) => Value::Record(
            parts
                .iter()
                .map(|(n, v)| match v {
                    Value::String(t) if n == "detail" && quotes(t) => (
                        n.clone(),
                        Value::String("withheld: it quoted a sensitive value".into()),
                    ),
                    _ => (n.clone(), v.clone()),
                })
                .collect(),
        ),
        other => other.clone(),
    };
    Value::Record(
        fields
            .iter()
            .map(|(n, v)| match v {
                Value::Array(items) if n == "reasons" => {
                    (n.clone(), Value::Array(items.iter().map(reason).collect()))
                }
                _ => (n.clone(), v.clone()),
            })
            .collect(),
    )
}

/// How sensitive values are rewritten for the cloud tiers.
pub enum Protection {
    Drop,
    Tokenize(hmac::Key),
    Encrypt {
        key_id: String,
        aead: Box<aead::LessSafeKey>,
        nonces: hmac::Key,
    },
}

fn read_key(policy: &PiiPolicy, mode: &'static str) -> Result<[u8; 32], PiiKeyError> {
    load_key(policy.key_file.as_deref(), policy.key_env.as_deref(), mode)
}

/// A key from its file or its environment variable.
fn load_key(
    file: Option<&std::path::Path>,
    env: Option<&str>,
    mode: &'static str,
) -> Result<[u8; 32], PiiKeyError> {
    if let Some(name) = env {
        let text = std::env::var(name).unwrap_or_default();
        return hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| PiiKeyError::Env { name: name.into() });
    }
    let path = file.ok_or(PiiKeyError::Missing(mode))?;
    let shown = path.display().to_string();
    let raw = std::fs::read(path).map_err(|source| PiiKeyError::Read {
        path: shown.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&raw);
    let bytes = match hex::decode(text.trim()) {
        Ok(b) if b.len() == 32 => b,
        _ => raw,
    };
    bytes.try_into().map_err(|b: Vec<u8>| PiiKeyError::Length {
        path: shown,
        len: b.len(),
    })
}

impl Protection {
    pub fn from_policy(policy: &PiiPolicy) -> Result<Self, PiiKeyError> {
        Ok(match policy.mode {
            PiiMode::Drop => Protection::Drop,
            PiiMode::Tokenize => {
                let key = read_key(policy, "tokenize")?;
                Protection::Tokenize(hmac::Key::new(hmac::HMAC_SHA256, &key))
            }
            PiiMode::Encrypt => {
                let key = read_key(policy, "encrypt")?;
                let key_id = policy
                    .key_id
                    .clone()
                    .ok_or(PiiKeyError::Missing("encrypt"))?;
                let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &key)
                    .expect("a 32-byte key fits AES-256-GCM");
                Protection::Encrypt {
                    key_id,
                    aead: Box::new(aead::LessSafeKey::new(unbound)),
                    nonces: hmac::Key::new(hmac::HMAC_SHA256, &key),
                }
            }
        })
    }

    fn text(&self, text: &str, position: &str, column: &str, index: usize) -> Option<String> {
        match self {
            Protection::Drop => None,
            Protection::Tokenize(key) => {
                let tag = hmac::sign(key, text.as_bytes());
                Some(format!("tok:{}", hex::encode(&tag.as_ref()[..16])))
            }
            Protection::Encrypt {
                key_id,
                aead: key,
                nonces,
            } => {
                let seed = hmac::sign(
                    nonces,
                    format!("nonce\0{position}\0{column}\0{index}").as_bytes(),
                );
                let mut nonce = [0u8; aead::NONCE_LEN];
                nonce.copy_from_slice(&seed.as_ref()[..aead::NONCE_LEN]);
                let mut sealed = text.as_bytes().to_vec();
                key.seal_in_place_append_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(key_id.as_bytes()),
                    &mut sealed,
                )
                .ok()?;
                let mut out = nonce.to_vec();
                out.extend_from_slice(&sealed);
                Some(format!(
                    "enc:{key_id}:{}",
                    base64::engine::general_purpose::STANDARD.encode(out)
                ))
            }
        }
    }

    /// The protected form of a sensitive column's value (a nullable union or a bare
    /// value), of the same Avro type; NULL where the type cannot carry protected text.
    pub fn protect(&self, value: &Value, position: &str, column: &str) -> Value {
        let null = Value::Union(0, Box::new(Value::Null));
        let inner = match value {
            Value::Union(_, inner) => &**inner,
            v => v,
        };
        let wrap = |v: Value| match value {
            Value::Union(i, _) => Value::Union(*i, Box::new(v)),
            _ => v,
        };
        match inner {
            Value::Null => value.clone(),
            Value::String(s) => match self.text(s, position, column, 0) {
                Some(t) => wrap(Value::String(t)),
                None => null,
            },
            Value::Array(items) => {
                if matches!(self, Protection::Drop) {
                    return null;
                }
                let protected: Option<Vec<Value>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| match item {
                        Value::String(s) => self.text(s, position, column, i).map(Value::String),
                        Value::Union(b, boxed) => match &**boxed {
                            Value::String(s) => self
                                .text(s, position, column, i)
                                .map(|t| Value::Union(*b, Box::new(Value::String(t)))),
                            Value::Null => Some(item.clone()),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect();
                protected.map_or(null, |items| wrap(Value::Array(items)))
            }
            _ => null,
        }
    }
}

/// Every key a tiering policy knows, by id: the active one and the retired ones.
pub struct Keyring {
    keys: std::collections::HashMap<String, [u8; 32]>,
}

impl Keyring {
    pub fn from_policy(policy: &PiiPolicy) -> Result<Self, PiiKeyError> {
        let mut keys = std::collections::HashMap::new();
        if let Some(id) = &policy.key_id {
            keys.insert(id.clone(), read_key(policy, "encrypt")?);
        }
        for retired in &policy.retired_keys {
            let key = load_key(
                retired.key_file.as_deref(),
                retired.key_env.as_deref(),
                "encrypt",
            )?;
            keys.insert(retired.id.clone(), key);
        }
        Ok(Self { keys })
    }

    /// The clear text of an `enc:<key id>:…` value, with the key its id names.
    pub fn decrypt(&self, text: &str) -> Result<String, PiiKeyError> {
        let key_id = text
            .strip_prefix("enc:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(id, _)| id)
            .ok_or(PiiKeyError::Corrupt)?;
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| PiiKeyError::UnknownKey(key_id.to_string()))?;
        decrypt(text, key).ok_or(PiiKeyError::Corrupt)
    }
}

/// Decrypts an `enc:` value with `key` (for tests and the on-premise side).
pub fn decrypt(text: &str, key: &[u8; 32]) -> Option<String> {
    let rest = text.strip_prefix("enc:")?;
    let (key_id, data) = rest.split_once(':')?;
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    if bytes.len() < aead::NONCE_LEN {
        return None;
    }
    let mut sealed = bytes.split_off(aead::NONCE_LEN);
    let nonce = aead::Nonce::try_assume_unique_for_key(&bytes).ok()?;
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, key).ok()?;
    let plain = aead::LessSafeKey::new(unbound)
        .open_in_place(nonce, aead::Aad::from(key_id.as_bytes()), &mut sealed)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}
