//! Decoder for the pgoutput logical replication protocol (version 1), the payload of
//! XLogData messages on a replication connection.
//!
//! Pure and allocation-light: it turns bytes into [`Message`]s and never panics on
//! malformed input — every short read or unknown tag is a [`DecodeError`] with the
//! offset where it happened, so a corrupt message is reported, not guessed at.
//! Column values stay in PostgreSQL's text format; typing them is the job of the
//! relation cache, which knows each column's type.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput message ends early: needed {needed} more byte(s) at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("unknown pgoutput message tag {tag:#04x} ({:?})", *tag as char)]
    UnknownTag { tag: u8 },
    #[error("unknown tuple column kind {kind:#04x} at offset {offset}")]
    UnknownColumnKind { offset: usize, kind: u8 },
    #[error("unexpected tuple marker {marker:#04x} at offset {offset} (expected N, K or O)")]
    UnexpectedMarker { offset: usize, marker: u8 },
    #[error("string at offset {offset} is not NUL-terminated or not UTF-8")]
    BadString { offset: usize },
    #[error("negative length {len} at offset {offset}")]
    NegativeLength { offset: usize, len: i64 },
}

/// How a table identifies rows in UPDATE and DELETE messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    Default,
    Nothing,
    Full,
    Index,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key, by default the primary key).
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

/// One column of a row image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// An unchanged TOASTed value the server did not send.
    UnchangedToast,
    Text(Bytes),
    Binary(Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        commit_time_micros: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time_micros: i64,
    },
    Origin {
        lsn: u64,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<Cell>,
    },
    /// `old` is the key (`K`) or the whole old row (`O`, REPLICA IDENTITY FULL), when sent.
    Update {
        relation: u32,
        old: Option<(OldKind, Vec<Cell>)>,
        new: Vec<Cell>,
    },
    Delete {
        relation: u32,
        old: (OldKind, Vec<Cell>),
    },
    Truncate {
        options: u8,
        relations: Vec<u32>,
    },
    LogicalMessage {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Bytes,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    Key,
    FullRow,
}

struct Cursor<'a> {
    bytes: &'a Bytes,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(DecodeError::Truncated {
                offset: self.pos,
                needed: n.saturating_sub(self.bytes.len().saturating_sub(self.pos)),
            })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.u32()? as i32)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }
    fn cstring(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(DecodeError::BadString { offset: start })?;
        let text = std::str::from_utf8(&rest[..nul])
            .map_err(|_| DecodeError::BadString { offset: start })?;
        self.pos += nul + 1;
        Ok(text.to_string())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n)?;
        Ok(self.bytes.slice(start..start + n))
    }
    fn length(&mut self) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let len = self.i32()?;
        usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
            offset,
            len: i64::from(len),
        })
    }
    fn count(&mut self) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength {
            offset,
            len: i64::from(n),
        })
    }

    fn tuple(&mut self) -> Result<Vec<Cell>, DecodeError> {
        let n = self.count()?;
        let mut cells = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let offset = self.pos;
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::UnchangedToast,
                b't' => {
                    let len = self.length()?;
                    Cell::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.length()?;
                    Cell::Binary(self.bytes(len)?)
                }
                kind => return Err(DecodeError::UnknownColumnKind { offset, kind }),
            });
        }
        Ok(cells)
    }

    fn old_tuple(&mut self, marker: u8) -> Result<(OldKind, Vec<Cell>), DecodeError> {
        let kind = match marker {
            b'K' => OldKind::Key,
            b'O' => OldKind::FullRow,
            marker => {
                return Err(DecodeError::UnexpectedMarker {
                    offset: self.pos - 1,
                    marker,
                })
            }
        };
        Ok((kind, self.tuple()?))
    }

    fn expect_new(&mut self) -> Result<Vec<Cell>, DecodeError> {
        match self.u8()? {
            b'N' => self.tuple(),
            marker => Err(DecodeError::UnexpectedMarker {
                offset: self.pos - 1,
                marker,
            }),
        }
    }
}

/// Decodes one pgoutput message.
pub fn decode(bytes: &Bytes) -> Result<Message, DecodeError> {
    let mut c = Cursor { bytes, pos: 0 };
    let tag = c.u8()?;
    Ok(match tag {
        b'B' => Message::Begin {
            final_lsn: c.u64()?,
            commit_time_micros: c.i64()?,
            xid: c.u32()?,
        },
        b'C' => Message::Commit {
            flags: c.u8()?,
            commit_lsn: c.u64()?,
            end_lsn: c.u64()?,
            commit_time_micros: c.i64()?,
        },
        b'O' => Message::Origin {
            lsn: c.u64()?,
            name: c.cstring()?,
        },
        b'R' => {
            let oid = c.u32()?;
            let namespace = c.cstring()?;
            let name = c.cstring()?;
            let replica_identity = match c.u8()? {
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                _ => ReplicaIdentity::Default,
            };
            let n = c.count()?;
            let mut columns = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let flags = c.u8()?;
                columns.push(RelationColumn {
                    is_key: flags & 1 == 1,
                    name: c.cstring()?,
                    type_oid: c.u32()?,
                    type_modifier: c.i32()?,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: c.u32()?,
            namespace: c.cstring()?,
            name: c.cstring()?,
        },
        b'I' => {
            let relation = c.u32()?;
            Message::Insert {
                relation,
                new: c.expect_new()?,
            }
        }
        b'U' => {
            let relation = c.u32()?;
            match c.u8()? {
                b'N' => Message::Update {
                    relation,
                    old: None,
                    new: c.tuple()?,
                },
                marker => {
                    let old = c.old_tuple(marker)?;
                    Message::Update {
                        relation,
                        old: Some(old),
                        new: c.expect_new()?,
                    }
                }
            }
        }
        b'D' => {
            let relation = c.u32()?;
            let marker = c.u8()?;
            Message::Delete {
                relation,
                old: c.old_tuple(marker)?,
            }
        }
        b'T' => {
            let n = c.u32()? as usize;
            let options = c.u8()?;
            let mut relations = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                relations.push(c.u32()?);
            }
            Message::Truncate { options, relations }
        }
        b'M' => {
            let flags = c.u8()?;
            let lsn = c.u64()?;
            let prefix = c.cstring()?;
            let len = c.length()?;
            Message::LogicalMessage {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: c.bytes(len)?,
            }
        }
        tag => return Err(DecodeError::UnknownTag { tag }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_bytes() -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend(16_384u32.to_be_bytes());
        b.extend(b"public\0claims\0");
        b.push(b'd');
        b.extend(2i16.to_be_bytes());
        b.push(1);
        b.extend(b"claim_id\0");
        b.extend(20u32.to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.push(0);
        b.extend(b"notes\0");
        b.extend(25u32.to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b
    }

    fn tuple(cells: &[Option<&str>]) -> Vec<u8> {
        let mut b = (cells.len() as i16).to_be_bytes().to_vec();
        for c in cells {
            match c {
                None => b.push(b'n'),
                Some("<toast>") => b.push(b'u'),
                Some(text) => {
                    b.push(b't');
                    b.extend((text.len() as i32).to_be_bytes());
                    b.extend(text.as_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn decodes_relation_and_changes() {
        let Message::Relation(r) = decode(&Bytes::from(relation_bytes())).unwrap() else {
            panic!("a relation")
        };
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str(), r.columns.len()),
            ("public", "claims", 2)
        );
        assert!(r.columns[0].is_key && !r.columns[1].is_key);

        let mut insert = vec![b'I'];
        insert.extend(16_384u32.to_be_bytes());
        insert.push(b'N');
        insert.extend(tuple(&[Some("7"), None]));
        assert_eq!(
            decode(&Bytes::from(insert)).unwrap(),
            Message::Insert {
                relation: 16_384,
                new: vec![Cell::Text(Bytes::from_static(b"7")), Cell::Null]
            }
        );

        let mut update = vec![b'U'];
        update.extend(16_384u32.to_be_bytes());
        update.push(b'K');
        update.extend(tuple(&[Some("7"), None]));
        update.push(b'N');
        update.extend(tuple(&[Some("8"), Some("<toast>")]));
        let Message::Update {
            old: Some((OldKind::Key, old)),
            new,
            ..
        } = decode(&Bytes::from(update)).unwrap()
        else {
            panic!("an update")
        };
        assert_eq!(old[0], Cell::Text(Bytes::from_static(b"7")));
        assert_eq!(new[1], Cell::UnchangedToast);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = relation_bytes();
        for len in 0..full.len() {
            assert!(
                decode(&Bytes::copy_from_slice(&full[..len])).is_err(),
                "prefix of {len} bytes"
            );
        }
        assert_eq!(
            decode(&Bytes::from_static(b"Z")),
            Err(DecodeError::UnknownTag { tag: b'Z' })
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&Bytes::from(bytes));
        }
    }
}
