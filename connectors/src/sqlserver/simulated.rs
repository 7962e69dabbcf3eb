//! A SQL Server CDC database in memory, answering the [`CdcReader`] calls as the CDC
//! functions do: for the source's tests and benchmarks on machines where SQL Server
//! cannot run (the wire path is tested against a TDS stand-in, and against a real
//! server by `docker/sqlserver/run-tests.sh`).
//!
//! What it models: tables with a `bigint` primary key, transactions committed at
//! increasing LSNs with one seqval per change, update before- and after-images,
//! capture instances (a newer one per table after a schema change, starting at the next
//! LSN), the cleanup job (the minimum LSN an instance keeps), CDC disabled, transient
//! failures and a server that stops answering. The capture job has no latency here:
//! a commit is in the change tables at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tiberius::ColumnData;

use super::lsn::{Lsn, Operation, Position};
use super::pool::Connect;
use super::reader::Columns;
use super::stream::{CaptureInstance, CapturedColumn, CdcError, CdcReader, ChangeRow};

struct Instance {
    info: CaptureInstance,
    columns: Vec<CapturedColumn>,
    changes: Vec<ChangeRow<Columns>>,
    min_lsn: Lsn,
}

#[derive(Default)]
struct State {
    last_lsn: u64,
    /// table → key → row
    tables: BTreeMap<String, BTreeMap<i64, Columns>>,
    instances: Vec<Instance>,
    cdc_disabled: bool,
    failures_to_inject: u32,
    stalled: bool,
}

/// The simulated database; clones share it.
#[derive(Clone, Default)]
pub struct SimulatedCdc {
    state: Arc<Mutex<State>>,
}

/// An LSN from a counter, as the simulation numbers them.
pub fn lsn(n: u64) -> Lsn {
    let mut bytes = [0u8; 10];
    bytes[2..].copy_from_slice(&n.to_be_bytes());
    Lsn(bytes)
}

/// One change of a transaction.
pub enum Change {
    /// Insert or replace the row with this key (the first column).
    Upsert {
        table: String,
        row: Columns,
    },
    Delete {
        table: String,
        key: i64,
    },
}

impl SimulatedCdc {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates `schema.table` with CDC on: its capture instance `<schema>_<table>`
    /// starts at the next LSN. The first column is the `bigint` key.
    pub fn create_table(&self, table: &str, columns: Vec<CapturedColumn>) {
        let name = table.replace('.', "_");
        self.add_instance(table, &name, columns);
    }

    /// A schema change: a new capture instance `name` of `table` with `columns`,
    /// starting at the next LSN (the old one stays, as SQL Server keeps two).
    pub fn add_instance(&self, table: &str, name: &str, columns: Vec<CapturedColumn>) {
        let mut s = self.lock();
        s.tables.entry(table.to_string()).or_default();
        let start_lsn = lsn(s.last_lsn + 1);
        s.instances.push(Instance {
            info: CaptureInstance {
                table: table.to_string(),
                name: name.to_string(),
                start_lsn,
            },
            columns,
            changes: Vec::new(),
            min_lsn: start_lsn,
        });
    }

    /// Commits `changes` as one transaction; returns its commit LSN.
    pub fn commit(&self, changes: Vec<Change>) -> Lsn {
        let mut s = self.lock();
        s.last_lsn += 1;
        let commit_lsn = lsn(s.last_lsn);
        for (n, change) in changes.into_iter().enumerate() {
            let at = |operation| Position {
                commit_lsn,
                seqval: lsn(n as u64 + 1),
                operation,
            };
            let (table, images) = match change {
                Change::Upsert { table, row } => {
                    let key = key_of(&row);
                    let rows = s.tables.entry(table.clone()).or_default();
                    let images = match rows.insert(key, row.clone()) {
                        Some(old) => vec![
                            (at(Operation::UpdateBefore), old),
                            (at(Operation::UpdateAfter), row),
                        ],
                        None => vec![(at(Operation::Insert), row)],
                    };
                    (table, images)
                }
                Change::Delete { table, key } => {
                    let old = s.tables.get_mut(&table).and_then(|rows| rows.remove(&key));
                    match old {
                        Some(old) => (table, vec![(at(Operation::Delete), old)]),
                        None => continue,
                    }
                }
            };
            // The newest instance of the table captures the change, with its columns.
            if let Some(instance) = s
                .instances
                .iter_mut()
                .filter(|i| i.info.table == table)
                .max_by_key(|i| i.info.start_lsn)
            {
                for (position, row) in images {
                    let row = project(&row, &instance.columns);
                    instance.changes.push(ChangeRow { position, row });
                }
            }
        }
        commit_lsn
    }

    /// The cleanup job: every instance keeps only changes at or after `keep_from`.
    pub fn cleanup(&self, keep_from: Lsn) {
        let mut s = self.lock();
        for instance in &mut s.instances {
            instance
                .changes
                .retain(|c| c.position.commit_lsn >= keep_from);
            instance.min_lsn = instance.min_lsn.max(keep_from);
        }
    }

    /// The current rows of `table`, by key.
    pub fn rows(&self, table: &str) -> BTreeMap<i64, Columns> {
        self.lock().tables.get(table).cloned().unwrap_or_default()
    }

    pub fn set_cdc_enabled(&self, enabled: bool) {
        self.lock().cdc_disabled = !enabled;
    }

    /// The next `n` calls fail as a server that went away would.
    pub fn fail_next(&self, n: u32) {
        self.lock().failures_to_inject = n;
    }

    /// While stalled, every call waits forever (a hung server).
    pub fn set_stalled(&self, stalled: bool) {
        self.lock().stalled = stalled;
    }

    /// Whether the server answers now (`Ok(false)`: it hangs), or fails.
    fn check(&self) -> Result<bool, CdcError> {
        let mut s = self.lock();
        if s.stalled {
            return Ok(false);
        }
        if s.failures_to_inject > 0 {
            s.failures_to_inject -= 1;
            return Err(CdcError::Transient("simulated: connection reset".into()));
        }
        Ok(true)
    }

    async fn answer<T>(
        &self,
        f: impl FnOnce(&State) -> Result<T, CdcError>,
    ) -> Result<T, CdcError> {
        if !self.check()? {
            futures::future::pending::<()>().await;
        }
        let s = self.lock();
        f(&s)
    }
}

fn key_of(row: &Columns) -> i64 {
    match row.first() {
        Some((_, ColumnData::I64(Some(k)))) => *k,
        _ => 0,
    }
}

/// The row as an instance with `columns` captures it (missing columns NULL).
fn project(row: &Columns, columns: &[CapturedColumn]) -> Columns {
    columns
        .iter()
        .map(|c| {
            let data = row
                .iter()
                .find(|(n, _)| n == &c.name)
                .map(|(_, d)| d.clone())
                .unwrap_or(ColumnData::String(None));
            (c.name.clone(), data)
        })
        .collect()
}

/// A reader of the simulated database; a snapshot copies the tables as they are.
pub struct SimulatedReader {
    db: SimulatedCdc,
    snapshot: Option<HashMap<String, BTreeMap<i64, Columns>>>,
}

impl CdcReader for SimulatedReader {
    type Row = Columns;

    fn capture_instances(&mut self) -> BoxFuture<'_, Result<Vec<CaptureInstance>, CdcError>> {
        Box::pin(self.db.answer(|s| {
            if s.cdc_disabled {
                return Err(CdcError::DatabaseNotEnabled {
                    database: "simulated".into(),
                });
            }
            Ok(s.instances.iter().map(|i| i.info.clone()).collect())
        }))
    }

    fn max_lsn(&mut self) -> BoxFuture<'_, Result<Lsn, CdcError>> {
        Box::pin(self.db.answer(|s| Ok(lsn(s.last_lsn))))
    }

    fn min_lsn<'a>(&'a mut self, instance: &'a str) -> BoxFuture<'a, Result<Lsn, CdcError>> {
        Box::pin(self.db.answer(move |s| {
            Ok(s.instances
                .iter()
                .find(|i| i.info.name == instance)
                .map_or(Lsn::ZERO, |i| i.min_lsn))
        }))
    }

    fn changes<'a>(
        &'a mut self,
        instance: &'a str,
        from: Lsn,
        to: Lsn,
    ) -> BoxFuture<'a, Result<Vec<ChangeRow<Columns>>, CdcError>> {
        Box::pin(self.db.answer(move |s| {
            let instance = s
                .instances
                .iter()
                .find(|i| i.info.name == instance)
                .ok_or_else(|| CdcError::Protocol(format!("no capture instance {instance}")))?;
            let mut rows: Vec<_> = instance
                .changes
                .iter()
                .filter(|c| (from..=to).contains(&c.position.commit_lsn))
                .cloned()
                .collect();
            rows.sort_by_key(|c| c.position);
            Ok(rows)
        }))
    }

    fn columns<'a>(
        &'a mut self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CapturedColumn>, CdcError>> {
        Box::pin(self.db.answer(move |s| {
            Ok(s.instances
                .iter()
                .find(|i| i.info.name == instance)
                .map(|i| i.columns.clone())
                .unwrap_or_default())
        }))
    }

    fn begin_snapshot(&mut self) -> BoxFuture<'_, Result<Lsn, CdcError>> {
        Box::pin(async move {
            let (at, tables) = self
                .db
                .answer(|s| {
                    let tables = s
                        .tables
                        .iter()
                        .map(|(t, r)| (t.clone(), r.clone()))
                        .collect();
                    Ok((lsn(s.last_lsn), tables))
                })
                .await?;
            self.snapshot = Some(tables);
            Ok(at)
        })
    }

    fn snapshot_rows<'a>(
        &'a mut self,
        table: &'a str,
        columns: &'a [String],
    ) -> BoxStream<'a, Result<Columns, CdcError>> {
        let rows: Vec<Result<Columns, CdcError>> = match &self.snapshot {
            None => vec![Err(CdcError::Protocol("no snapshot transaction".into()))],
            Some(tables) => tables
                .get(table)
                .into_iter()
                .flat_map(|rows| rows.values())
                .map(|row| {
                    Ok(columns
                        .iter()
                        .map(|c| {
                            let data = row.iter().find(|(n, _)| n == c).map(|(_, d)| d.clone());
                            (c.clone(), data.unwrap_or(ColumnData::String(None)))
                        })
                        .collect())
                })
                .collect(),
        };
        Box::pin(futures::stream::iter(rows))
    }

    fn end_snapshot(&mut self) -> BoxFuture<'_, Result<(), CdcError>> {
        Box::pin(async move {
            self.db.answer(|_| Ok(())).await?;
            self.snapshot = None;
            Ok(())
        })
    }
}

impl Connect for SimulatedCdc {
    fn reader(&self) -> BoxFuture<'_, Result<Box<dyn CdcReader<Row = Columns> + '_>, CdcError>> {
        Box::pin(async move {
            self.answer(|_| Ok(())).await?;
            let reader: Box<dyn CdcReader<Row = Columns>> = Box::new(SimulatedReader {
                db: self.clone(),
                snapshot: None,
            });
            Ok(reader)
        })
    }
}
