//! The SQL Server source: snapshot, then polling the CDC change tables, each change an
//! Avro event in Kafka.
//!
//! Invariants:
//! - **Offset after acknowledgement.** The offset (the position of the last change
//!   whose event Kafka acknowledged, with every earlier one) is written to
//!   `<region>.strata.source-state` under `sqlserver/<database>/<component>` only after
//!   Kafka acknowledged the poll's events; a crash re-reads from it, so a change is never
//!   lost, and one sent twice carries the same position both times.
//! - **Snapshot, then exactly the rest.** With no offset stored the tables are read in
//!   one SNAPSHOT-isolation transaction whose first read is `sys.fn_cdc_get_max_lsn()`
//!   (L): the rows hold every change up to L and none after, and streaming starts after
//!   L. Snapshot rows (`op = r`) are positioned at L, before every streamed change. The
//!   offset `after L` is stored only once Kafka acknowledged every snapshot row; a
//!   snapshot cut short is taken again. One caveat, as in Debezium: a change committed
//!   before the snapshot but not yet harvested by the capture job has an LSN after L,
//!   so it is also streamed (a repeat with a later position, which position-guarded
//!   stores apply as the same image; never a gap).
//! - **Schema changes.** Events are written with the columns of the capture instance
//!   they were read from; the first event from a newer instance registers its schema
//!   as a new version of the value subject before it is sent.
//! - **A good citizen.** Each poll borrows a pooled connection and every query has a
//!   deadline; failures back off and open a circuit ([`super::circuit`]) in this task
//!   only, so a slow or absent server never stalls the other sources. Definite errors
//!   (CDC off, a missing capture instance, permissions, an offset past retention)
//!   stop the source with their message.

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::types::Value;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use strata_pipeline::avro::types::{Column, ColumnType, UnmappedType};
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::runtime::{Source, SourceFailure};

use super::circuit::Circuit;
use super::config::{SnapshotMode, SqlServerSourceConfig};
use super::lsn::{Lsn, Offset, Operation, Position};
use super::pool::Connect;
use super::reader::Columns;
use super::stream::{self, current_instance, CapturedColumn, CdcError, CdcReader, ChangeKind};
use super::values::{column_value, ValueError};
use crate::emitter::{now_ms, EmitError, Emitter, SourceContext, TableShape};
use crate::envelope::{self, Images, SourceFields};
use crate::source_state::{SourceState, SourceStateError};

#[derive(Debug, thiserror::Error)]
pub enum SqlServerSourceError {
    #[error(transparent)]
    Cdc(#[from] CdcError),
    #[error(transparent)]
    Emit(#[from] EmitError),
    #[error("source offset: {0}")]
    State(#[from] Box<SourceStateError>),
    #[error("table `{table}`: {source}")]
    Value {
        table: String,
        #[source]
        source: ValueError,
    },
    #[error("table `{table}`, column `{column}`: {source}")]
    Type {
        table: String,
        column: String,
        #[source]
        source: UnmappedType,
    },
    #[error("capture instance `{instance}` of `{table}` has no primary-key columns; Strata keys events by primary key (enable CDC on a table with one, or name a unique index with @index_name)")]
    NoKey { table: String, instance: String },
    #[error("SQL Server did not answer {what} within {after:?} (query_timeout)")]
    Timeout { what: &'static str, after: Duration },
}

impl SqlServerSourceError {
    /// Worth retrying later from the stored offset.
    pub fn is_transient(&self) -> bool {
        match self {
            SqlServerSourceError::Cdc(e) => e.is_transient(),
            SqlServerSourceError::Emit(e) => e.is_transient(),
            SqlServerSourceError::State(_) | SqlServerSourceError::Timeout { .. } => true,
            _ => false,
        }
    }
}

type Result<T, E = SqlServerSourceError> = std::result::Result<T, E>;

impl From<SourceStateError> for SqlServerSourceError {
    fn from(e: SourceStateError) -> Self {
        SqlServerSourceError::State(Box::new(e))
    }
}

/// What the source stores in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRecord {
    /// Everything up to and including this position is in Kafka
    /// (`<commit LSN>:<seqval>:<operation>`, [`Offset::encode`]).
    pub offset: String,
    /// The LSN the last snapshot was read at.
    pub snapshot_lsn: String,
}

/// The SQL Server source behind the pipeline's [`Source`] seam.
pub struct SqlServerSource {
    pub config: SqlServerSourceConfig,
    pub context: SourceContext,
    pub connect: Box<dyn Connect>,
}

impl Source for SqlServerSource {
    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), SourceFailure>> {
        Box::pin(async move {
            run(&self.config, &self.context, &*self.connect, shutdown)
                .await
                .map_err(SourceFailure::from)
        })
    }
}

/// The topics the source writes, one per captured table.
pub fn topics(config: &SqlServerSourceConfig, region: &str) -> Vec<String> {
    config
        .tables
        .iter()
        .map(|t| {
            let (schema, table) = t.split_once('.').unwrap_or(("dbo", t));
            crate::emitter::topic_name(region, &config.database, schema, table)
        })
        .collect()
}

/// The state key of a source: one offset per database and component.
pub fn state_key(database: &str, component: &str) -> String {
    format!("sqlserver/{database}/{component}")
}

/// Runs the source until `shutdown` or a definite failure; transient ones are retried
/// through the circuit ([`Circuit`]), from the stored offset.
pub async fn run(
    config: &SqlServerSourceConfig,
    ctx: &SourceContext,
    connect: &dyn Connect,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut circuit = Circuit::new(
        config.max_backoff.0,
        config.circuit_failures,
        config.circuit_open_for.0,
    );
    let labels = [ctx.component.as_str()];
    loop {
        let error = match run_once(config, ctx, connect, &shutdown, &mut circuit).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => e,
            Err(e) => return Err(e),
        };
        ctx.metrics.ready.with_label_values(&labels).set(0);
        ctx.metrics.source_restarts.with_label_values(&labels).inc();
        let wait = circuit.failed();
        ctx.metrics
            .circuit_open
            .with_label_values(&labels)
            .set(i64::from(circuit.is_open()));
        tracing::warn!(component = %ctx.component, %error, retry_in = ?wait, failures = circuit.failures(), circuit_open = circuit.is_open(), "SQL Server source interrupted; resuming from the stored offset");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Bounds a query by the configured deadline.
async fn timed<T>(
    config: &SqlServerSourceConfig,
    what: &'static str,
    work: impl std::future::Future<Output = Result<T, CdcError>>,
) -> Result<T> {
    match tokio::time::timeout(config.query_timeout.0, work).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(SqlServerSourceError::Timeout {
            what,
            after: config.query_timeout.0,
        }),
    }
}

async fn run_once(
    config: &SqlServerSourceConfig,
    ctx: &SourceContext,
    connect: &dyn Connect,
    shutdown: &CancellationToken,
    circuit: &mut Circuit,
) -> Result<()> {
    let state = SourceState::new(&ctx.region, &state_key(&config.database, &ctx.component));
    let stored: Option<OffsetRecord> = state.read(&ctx.kafka).await?;
    let stored = stored.and_then(|r| Some((Offset::decode(&r.offset)?, r.snapshot_lsn)));
    let mut emitter = Emitter::new(
        ctx,
        config.database.clone(),
        stored.as_ref().map(|s| s.0),
        10_000,
    )?;
    let mut shapes = Shapes::default();
    let labels = [ctx.component.as_str()];

    let (mut offset, mut snapshot_lsn) = match stored {
        Some((offset, snapshot_lsn)) => (offset, snapshot_lsn),
        None => {
            let mut reader = timed(config, "a connection", connect.reader()).await?;
            let at = match config.snapshot {
                SnapshotMode::Never => {
                    let max = timed(config, "fn_cdc_get_max_lsn", reader.max_lsn()).await?;
                    save(&state, &mut emitter, after(max), max).await?;
                    max
                }
                _ => {
                    snapshot(
                        config,
                        &mut *reader,
                        &mut emitter,
                        &mut shapes,
                        &state,
                        shutdown,
                    )
                    .await?
                }
            };
            (after(at), at.to_string())
        }
    };
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let mut reader = timed(config, "a connection", connect.reader()).await?;
        ctx.metrics.ready.with_label_values(&labels).set(1);
        let polled = timed(
            config,
            "a poll of the change tables",
            stream::poll(
                &mut *reader,
                &config.tables,
                Some(offset),
                Lsn::ZERO,
                config.batch_size,
            ),
        )
        .await;
        let events = match polled {
            Err(SqlServerSourceError::Cdc(CdcError::BeyondRetention { .. }))
                if config.snapshot == SnapshotMode::WhenNeeded =>
            {
                tracing::warn!(component = %ctx.component, "the stored offset is older than the retained changes; snapshotting again (snapshot: when_needed)");
                let at = snapshot(
                    config,
                    &mut *reader,
                    &mut emitter,
                    &mut shapes,
                    &state,
                    shutdown,
                )
                .await?;
                (offset, snapshot_lsn) = (after(at), at.to_string());
                continue;
            }
            other => other?,
        };
        circuit.succeeded();
        ctx.metrics.circuit_open.with_label_values(&labels).set(0);
        let full = events.len() >= config.batch_size;
        if let Some(last) = events.last().map(|e| e.position) {
            let tx = emitter.tracker.begin();
            for event in events {
                let shape = shapes
                    .of(
                        config,
                        &mut *reader,
                        &mut emitter,
                        &event.table,
                        &event.instance,
                    )
                    .await?;
                let (op, before, after) = match event.kind {
                    ChangeKind::Insert { after } => ("c", None, Some(after)),
                    ChangeKind::Update { before, after } => ("u", Some(before), Some(after)),
                    ChangeKind::Delete { before } => ("d", Some(before), None),
                };
                let image = |row: Option<Columns>| -> Result<Option<(Value, Vec<String>)>> {
                    row.map(|r| record(shape, &r).map_err(|e| value_error(&event.table, e)))
                        .transpose()
                };
                let (before, after) = (image(before)?, image(after)?);
                let key = after
                    .as_ref()
                    .or(before.as_ref())
                    .map(|(row, _)| envelope::key(shape, row));
                let (after, unavailable) = match after {
                    Some((row, unavailable)) => (Some(row), unavailable),
                    None => (None, Vec::new()),
                };
                let value = change_envelope(
                    &emitter,
                    shape,
                    Images {
                        op,
                        before: before.map(|(v, _)| v),
                        after,
                        unavailable,
                    },
                    event.position,
                    None,
                );
                emitter.send(tx, shape, key.as_ref(), &value).await?;
            }
            emitter.tracker.seal(tx, Offset { position: last });
            emitter.drain().await?;
            offset = Offset { position: last };
            let record = OffsetRecord {
                offset: offset.encode(),
                snapshot_lsn: snapshot_lsn.clone(),
            };
            state.write(&ctx.kafka, &emitter.producer, &record).await?;
        }
        drop(reader);
        if !full {
            tokio::select! {
                _ = tokio::time::sleep(config.poll_interval.0) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// The offset just past everything at `lsn`.
fn after(lsn: Lsn) -> Offset {
    Offset {
        position: Position {
            commit_lsn: lsn,
            seqval: Lsn([0xff; 10]),
            operation: Operation::UpdateAfter,
        },
    }
}

async fn save(
    state: &SourceState,
    emitter: &mut Emitter<'_, Offset>,
    offset: Offset,
    snapshot_lsn: Lsn,
) -> Result<()> {
    let record = OffsetRecord {
        offset: offset.encode(),
        snapshot_lsn: snapshot_lsn.to_string(),
    };
    state
        .write(&emitter.ctx.kafka, &emitter.producer, &record)
        .await?;
    Ok(())
}

/// Reads every captured table in one SNAPSHOT transaction, sends each row as `op = r`,
/// and stores the offset after the snapshot's LSN once Kafka acknowledged them all.
/// Returns that LSN.
async fn snapshot(
    config: &SqlServerSourceConfig,
    reader: &mut (dyn CdcReader<Row = Columns> + '_),
    emitter: &mut Emitter<'_, Offset>,
    shapes: &mut Shapes,
    state: &SourceState,
    shutdown: &CancellationToken,
) -> Result<Lsn> {
    let instances = timed(config, "cdc.change_tables", reader.capture_instances()).await?;
    let mut tables = Vec::new();
    for table in &config.tables {
        let instance = current_instance(&instances, table)?.name.clone();
        let shape = shapes
            .of(config, reader, emitter, table, &instance)
            .await?
            .clone();
        tables.push((table.clone(), shape));
    }
    // Snapshot rows are as old as the snapshot's start, not the time each is read (the
    // changes polled after it are read, and so timed, later).
    let started_ms = now_ms();
    let at = timed(config, "the snapshot's start", reader.begin_snapshot()).await?;
    tracing::info!(snapshot_lsn = %at, tables = tables.len(), "SQL Server snapshot started");
    let tx = emitter.tracker.begin();
    let mut index: u64 = 0;
    let ctx = emitter.ctx;
    for (table, shape) in &tables {
        let labels = [ctx.component.as_str(), table.as_str()];
        let done_gauge = ctx.metrics.snapshot_rows.with_label_values(&labels);
        let names: Vec<String> = shape.columns.iter().map(|c| c.name.clone()).collect();
        let mut rows = reader.snapshot_rows(table, &names);
        let mut done = 0i64;
        loop {
            let next = tokio::time::timeout(config.query_timeout.0, rows.next()).await;
            let row = match next {
                Err(_) => {
                    return Err(SqlServerSourceError::Timeout {
                        what: "the snapshot's next row",
                        after: config.query_timeout.0,
                    })
                }
                Ok(None) => break,
                Ok(Some(row)) => row?,
            };
            if shutdown.is_cancelled() {
                return Err(SqlServerSourceError::Cdc(CdcError::Transient(
                    "shut down during the snapshot; it is taken again on start".into(),
                )));
            }
            let (after, unavailable) = record(shape, &row).map_err(|e| value_error(table, e))?;
            let key = envelope::key(shape, &after);
            let position = Position {
                commit_lsn: at,
                seqval: snapshot_seqval(index),
                operation: Operation::Insert,
            };
            let value = change_envelope(
                emitter,
                shape,
                Images {
                    op: "r",
                    before: None,
                    after: Some(after),
                    unavailable,
                },
                position,
                Some(started_ms),
            );
            emitter.send(tx, shape, Some(&key), &value).await?;
            index += 1;
            done += 1;
            if done % 10_000 == 0 {
                done_gauge.set(done);
            }
        }
        done_gauge.set(done);
        tracing::info!(%table, rows = done, "SQL Server snapshot of table done");
    }
    timed(config, "the snapshot's commit", reader.end_snapshot()).await?;
    let offset = after(at);
    emitter.tracker.seal(tx, offset);
    emitter.drain().await?;
    save(state, emitter, offset, at).await?;
    Ok(at)
}

/// Snapshot rows are numbered in the seqval of their position: unique, all at L.
fn snapshot_seqval(index: u64) -> Lsn {
    let mut bytes = [0u8; 10];
    bytes[2..].copy_from_slice(&index.to_be_bytes());
    Lsn(bytes)
}

fn value_error(table: &str, source: ValueError) -> SqlServerSourceError {
    SqlServerSourceError::Value {
        table: table.to_string(),
        source,
    }
}

fn change_envelope(
    emitter: &Emitter<'_, Offset>,
    shape: &TableShape,
    images: Images,
    position: Position,
    snapshot_started_ms: Option<i64>,
) -> Value {
    let now = now_ms();
    let source = SourceFields {
        connector: "sqlserver",
        region: &emitter.ctx.region,
        db: &emitter.db,
        position: position.text(),
        lsn: None,
        tx_index: None,
        commit_lsn: Some(position.commit_lsn.to_string()),
        seqval: Some(position.seqval.to_string()),
        txid: None,
        // CDC rows do not carry their commit time; the read time stands in for it.
        commit_time_ms: snapshot_started_ms.unwrap_or(now),
        snapshot: if snapshot_started_ms.is_some() {
            "true"
        } else {
            "false"
        },
    };
    envelope::envelope(shape, images, &source, now)
}

/// The Avro row of `row` in `shape`; a captured column the row lacks is NULL and named
/// unavailable.
fn record(shape: &TableShape, row: &Columns) -> Result<(Value, Vec<String>), ValueError> {
    let mut fields = Vec::with_capacity(shape.columns.len());
    let mut unavailable = Vec::new();
    for column in &shape.columns {
        let name = strata_pipeline::avro::types::avro_name(&column.name);
        let value = match row.iter().find(|(n, _)| n == &column.name) {
            Some((_, data)) => column_value(column, data)?,
            None => {
                unavailable.push(column.name.clone());
                Value::Union(0, Box::new(Value::Null))
            }
        };
        fields.push((name, value));
    }
    Ok((Value::Record(fields), unavailable))
}

/// The shape of each table per capture instance, registered with the emitter.
#[derive(Default)]
struct Shapes {
    /// table → (instance, shape)
    current: HashMap<String, (String, TableShape)>,
}

impl Shapes {
    async fn of(
        &mut self,
        config: &SqlServerSourceConfig,
        reader: &mut (dyn CdcReader<Row = Columns> + '_),
        emitter: &mut Emitter<'_, Offset>,
        table: &str,
        instance: &str,
    ) -> Result<&TableShape> {
        let known = self
            .current
            .get(table)
            .is_some_and(|(known, _)| known == instance);
        if !known {
            let columns = timed(config, "the captured columns", reader.columns(instance)).await?;
            let shape = table_shape(table, instance, &columns)?;
            let switched = self.current.contains_key(table);
            if switched {
                tracing::info!(%table, %instance, "new capture instance; registering its schema");
            }
            emitter.prepare(&shape, switched).await?;
            self.current
                .insert(table.to_string(), (instance.to_string(), shape));
        }
        Ok(&self.current[table].1)
    }
}

/// A table's shape from its capture instance's columns: key columns required, the rest
/// NULL-able (as the PostgreSQL source does: a later NULL-able column stays compatible).
pub fn table_shape(table: &str, instance: &str, columns: &[CapturedColumn]) -> Result<TableShape> {
    let (schema, name) = table.split_once('.').unwrap_or(("dbo", table));
    let key: Vec<String> = columns
        .iter()
        .filter(|c| c.key)
        .map(|c| c.name.clone())
        .collect();
    if key.is_empty() {
        return Err(SqlServerSourceError::NoKey {
            table: table.to_string(),
            instance: instance.to_string(),
        });
    }
    let columns = columns
        .iter()
        .map(|c| {
            let ty = ColumnType::from_sqlserver(&c.type_name).map_err(|source| {
                SqlServerSourceError::Type {
                    table: table.to_string(),
                    column: c.name.clone(),
                    source,
                }
            })?;
            Ok(Column {
                name: c.name.clone(),
                ty,
                nullable: !c.key,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TableShape {
        schema: schema.to_string(),
        table: name.to_string(),
        columns,
        key,
    })
}
