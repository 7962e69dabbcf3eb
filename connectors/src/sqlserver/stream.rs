//! The change stream over SQL Server CDC capture instances: which windows to read, from
//! which capture instance, and in what order the changes leave.
//!
//! Contract (what the source relies on; the property tests below check it):
//! - **Commit order.** Changes of every captured table leave in (`__$start_lsn`,
//!   `__$seqval`, `__$operation`) order, whatever table they belong to.
//! - **Exactly the rest.** Given the offset of the last change Kafka acknowledged, a
//!   poll returns the changes after it and nothing before or at it: the window starts
//!   at the offset's commit LSN (inclusive, so a transaction cut by a crash is finished)
//!   and what is at or before the offset is skipped.
//! - **Updates whole.** An update's before-image (operation 3) and after-image (4) leave
//!   as one event.
//! - **Capture instance switches.** When a table gets a newer capture instance (after a
//!   schema change), changes from its start LSN on are read from it and earlier ones
//!   from the older instance; each change leaves once.
//! - **No silent gaps.** A window that starts before an instance's retained changes
//!   (the cleanup job removed them) is an error that asks for a new snapshot.
//!
//! The SQL lives behind [`CdcReader`] (`reader.rs` speaks TDS through tiberius); this
//! module is pure logic.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::lsn::{Lsn, Offset, Operation, Position};

/// A capture instance of one source table (`cdc.change_tables`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureInstance {
    /// `schema.table` of the captured table.
    pub table: String,
    pub name: String,
    /// First LSN this instance captured.
    pub start_lsn: Lsn,
}

/// A column a capture instance captures, as its change table declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedColumn {
    pub name: String,
    /// The SQL Server type with its modifiers (`decimal(12,2)`), as
    /// `ColumnType::from_sqlserver` reads it.
    pub type_name: String,
    /// Part of the primary key (the instance's index columns).
    pub key: bool,
}

/// One row of `cdc.fn_cdc_get_all_changes_<instance>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow<R> {
    pub position: Position,
    pub row: R,
}

/// A change as the source emits it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent<R> {
    pub table: String,
    /// The instance it was read from (its columns describe `row`).
    pub instance: String,
    /// Position of the change (for an update, of its after-image).
    pub position: Position,
    pub kind: ChangeKind<R>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind<R> {
    Insert { after: R },
    Update { before: R, after: R },
    Delete { before: R },
}

#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    #[error("CDC is not enabled on database `{database}`; run `EXEC sys.sp_cdc_enable_db` (docker/sqlserver/ shows the setup)")]
    DatabaseNotEnabled { database: String },
    #[error("table `{table}` has no CDC capture instance (CDC not enabled on it, or its instance was dropped); run `EXEC sys.sp_cdc_enable_table @source_schema = N'…', @source_name = N'…', @role_name = NULL`")]
    TableNotEnabled { table: String },
    #[error("the stored offset of table `{table}` ({stored}) is older than the changes SQL Server still keeps (from {retained}, instance {instance}): the CDC cleanup job removed changes Strata never read. A new snapshot is needed (delete the source's offset to take one); nothing was skipped.")]
    BeyondRetention {
        table: String,
        instance: String,
        stored: Lsn,
        retained: Lsn,
    },
    #[error("the login lacks a permission CDC reading needs: {0}; grant SELECT on the cdc schema (or the capture instance's gating role)")]
    Permission(String),
    #[error("change {position} of `{table}` is an update's before-image without its after-image")]
    UnpairedUpdate { table: String, position: String },
    #[error("snapshot isolation is not allowed on database `{database}`, and the initial snapshot reads under it (a consistent view without locking the legacy tables); run `ALTER DATABASE [{database}] SET ALLOW_SNAPSHOT_ISOLATION ON`")]
    SnapshotIsolationOff { database: String },
    #[error("SQL Server is unreachable or failed: {0}")]
    Transient(String),
    #[error("SQL Server answered something unexpected: {0}")]
    Protocol(String),
}

impl CdcError {
    /// Worth retrying with backoff (the server is down or busy), as opposed to an error
    /// that needs the user.
    pub fn is_transient(&self) -> bool {
        matches!(self, CdcError::Transient(_))
    }
}

/// What the source needs from SQL Server.
///
/// Contract: `changes` answers in (start LSN, seqval, operation) order with both window
/// ends inclusive; `snapshot_rows` is called only between `begin_snapshot` and
/// `end_snapshot`, and every row it yields is as of the LSN `begin_snapshot` returned
/// (SNAPSHOT isolation: the transaction's first read fixes its view). Errors say whether
/// a retry may help ([`CdcError::is_transient`]); a reader is dropped after any error.
pub trait CdcReader: Send {
    type Row: Clone + Send;

    /// Every capture instance of the database (`cdc.change_tables`).
    fn capture_instances(&mut self) -> BoxFuture<'_, Result<Vec<CaptureInstance>, CdcError>>;

    /// `sys.fn_cdc_get_max_lsn()`.
    fn max_lsn(&mut self) -> BoxFuture<'_, Result<Lsn, CdcError>>;

    /// `sys.fn_cdc_get_min_lsn(instance)`: the oldest change the instance still keeps.
    fn min_lsn<'a>(&'a mut self, instance: &'a str) -> BoxFuture<'a, Result<Lsn, CdcError>>;

    /// `cdc.fn_cdc_get_all_changes_<instance>(from, to, N'all update old')`, both ends
    /// inclusive, in (start LSN, seqval, operation) order.
    fn changes<'a>(
        &'a mut self,
        instance: &'a str,
        from: Lsn,
        to: Lsn,
    ) -> BoxFuture<'a, Result<Vec<ChangeRow<Self::Row>>, CdcError>>;

    /// The captured columns of `instance`, in column order.
    fn columns<'a>(
        &'a mut self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CapturedColumn>, CdcError>>;

    /// Opens the snapshot transaction (SNAPSHOT isolation) and returns
    /// `sys.fn_cdc_get_max_lsn()` as it sees it: every change at or before that LSN is in
    /// the snapshot's rows, every later one is not.
    fn begin_snapshot(&mut self) -> BoxFuture<'_, Result<Lsn, CdcError>>;

    /// Every row of `table` (`schema.table`), its `columns` in that order.
    fn snapshot_rows<'a>(
        &'a mut self,
        table: &'a str,
        columns: &'a [String],
    ) -> BoxStream<'a, Result<Self::Row, CdcError>>;

    /// Commits the snapshot transaction.
    fn end_snapshot(&mut self) -> BoxFuture<'_, Result<(), CdcError>>;
}

/// The newest capture instance of `table`: the one whose columns describe its rows now.
pub fn current_instance<'a>(
    instances: &'a [CaptureInstance],
    table: &str,
) -> Result<&'a CaptureInstance, CdcError> {
    instances
        .iter()
        .filter(|i| i.table == table)
        .max_by_key(|i| i.start_lsn)
        .ok_or_else(|| CdcError::TableNotEnabled {
            table: table.to_string(),
        })
}

/// Where each table's changes come from over `[from, to]`: (instance, lo, hi) windows.
pub fn plan_windows(
    tables: &[String],
    instances: &[CaptureInstance],
    from: Lsn,
    to: Lsn,
) -> Result<Vec<(String, String, Lsn, Lsn)>, CdcError> {
    let mut windows = Vec::new();
    for table in tables {
        let mut own: Vec<&CaptureInstance> =
            instances.iter().filter(|i| &i.table == table).collect();
        if own.is_empty() {
            return Err(CdcError::TableNotEnabled {
                table: table.clone(),
            });
        }
        own.sort_by_key(|i| i.start_lsn);
        for (n, instance) in own.iter().enumerate() {
            // An instance serves from its start up to the next instance's start.
            let lo = from.max(instance.start_lsn);
            let hi = match own.get(n + 1) {
                Some(next) if next.start_lsn > Lsn::ZERO => to.min(next.start_lsn.decrement()),
                _ => to,
            };
            if lo <= hi {
                windows.push((table.clone(), instance.name.clone(), lo, hi));
            }
        }
    }
    Ok(windows)
}

/// One poll: the changes after `offset` (or from `start` without one), at most `limit`
/// events, in commit order. `start` is where streaming begins when nothing was read yet
/// (the snapshot's LSN, inclusive).
pub async fn poll<C: CdcReader + ?Sized>(
    reader: &mut C,
    tables: &[String],
    offset: Option<Offset>,
    start: Lsn,
    limit: usize,
) -> Result<Vec<ChangeEvent<C::Row>>, CdcError> {
    let instances = reader.capture_instances().await?;
    let max = reader.max_lsn().await?;
    let from = offset.map_or(start, |o| o.position.commit_lsn);
    if from > max {
        return Ok(Vec::new());
    }
    let windows = plan_windows(tables, &instances, from, max)?;
    let mut rows: BTreeMap<Position, (String, String, C::Row)> = BTreeMap::new();
    for (table, instance, lo, hi) in windows {
        let retained = reader.min_lsn(&instance).await?;
        if offset.is_some() && lo < retained {
            return Err(CdcError::BeyondRetention {
                table,
                instance,
                stored: lo,
                retained,
            });
        }
        for change in reader.changes(&instance, lo.max(retained), hi).await? {
            if offset.is_some_and(|o| change.position <= o.position) {
                continue;
            }
            rows.insert(
                change.position,
                (table.clone(), instance.clone(), change.row),
            );
        }
    }
    pair_updates(rows, limit)
}

/// Folds each update's before- and after-image into one event; stops after `limit`
/// events (never between the two images of an update).
fn pair_updates<R>(
    rows: BTreeMap<Position, (String, String, R)>,
    limit: usize,
) -> Result<Vec<ChangeEvent<R>>, CdcError> {
    let mut events = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while let Some((position, (table, instance, row))) = rows.next() {
        if events.len() >= limit {
            break;
        }
        let kind = match position.operation {
            Operation::Insert => ChangeKind::Insert { after: row },
            Operation::Delete => ChangeKind::Delete { before: row },
            // Offsets sit on after-images, so a lone after-image means SQL Server
            // returned half an update.
            Operation::UpdateAfter => {
                return Err(CdcError::UnpairedUpdate {
                    table,
                    position: position.text(),
                })
            }
            Operation::UpdateBefore => {
                let after = rows.next_if(|(p, (t, _, _))| {
                    p.commit_lsn == position.commit_lsn
                        && p.seqval == position.seqval
                        && p.operation == Operation::UpdateAfter
                        && t == &table
                });
                match after {
                    Some((after_position, (_, _, after))) => {
                        events.push(ChangeEvent {
                            table,
                            instance,
                            position: after_position,
                            kind: ChangeKind::Update { before: row, after },
                        });
                        continue;
                    }
                    None => {
                        return Err(CdcError::UnpairedUpdate {
                            table,
                            position: position.text(),
                        })
                    }
                }
            }
        };
        events.push(ChangeEvent {
            table,
            instance,
            position,
            kind,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests;
