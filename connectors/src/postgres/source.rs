//! The PostgreSQL source: snapshot, then streaming, each change an Avro event in Kafka.
//!
//! Invariants:
//! - The slot's `confirmed_flush_lsn` only moves to a position when Kafka has
//!   acknowledged every event up to it ([`AckTracker`]); a crash replays from there, so
//!   nothing is lost and a duplicate carries the same position as its original.
//! - While no transaction is open and nothing is in flight, keepalives move the
//!   confirmed position to the server's WAL end, so idle tables never pin WAL.
//! - The snapshot is read in the slot's exported snapshot, before streaming starts:
//!   every row once as `op=r`, then exactly the changes committed after it. A slot whose
//!   snapshot did not finish is never streamed from ([`super::snapshot_state`]).
//! - Transient failures (PostgreSQL or Kafka unreachable, the slot still held by a dead
//!   connection) restart the source from the slot's confirmed position after a backoff;
//!   definite ones (configuration, prerequisites, a lost slot, bad data) stop it with the
//!   error.

use std::time::Duration;

use futures::future::BoxFuture;
use pgwire_replication::{Lsn as WireLsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor, Row};
use strata_pipeline::kafka::acks::TxId;
use strata_pipeline::ops::backoff::Backoff;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::runtime::{Source, SourceFailure};

pub use crate::emitter::{topic_name, SourceContext};
use crate::emitter::{EmitError, Emitter};

use super::config::{PostgresSourceConfig, SnapshotMode};
use super::events::{self, RowChange, RowText, SourceInfo};
use super::pgoutput::{self, Cell, Message};
use super::position::{Lsn, Position};
use super::prerequisites::{self, PrerequisiteError};
use super::relations::{RelationCache, TableShape};
use super::snapshot_state::{Progress, SnapshotState, SnapshotStateError};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Prerequisites(#[from] PrerequisiteError),
    #[error(transparent)]
    Connection(#[from] crate::pg_connection::PgConnectionError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("replication connection failed: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    #[error(transparent)]
    Emit(#[from] EmitError),
    #[error("corrupt replication message: {0}")]
    Decode(#[from] pgoutput::DecodeError),
    #[error("{0}")]
    Value(#[from] super::values::ValueError),
    #[error("column type: {0}")]
    Type(#[from] strata_pipeline::avro::types::UnmappedType),
    #[error("schema: {0}")]
    Schema(#[from] strata_pipeline::avro::schemas::SchemaError),
    #[error("replication slot `{slot}` is lost (wal_status = lost): changes it had not read are gone. Strata never recreates it silently; drop it and re-snapshot deliberately (pg_drop_replication_slot('{slot}'))")]
    SlotLost { slot: String },
    #[error("a change arrived for relation {0}, which no Relation message described")]
    UnknownRelation(u32),
    #[error(transparent)]
    SnapshotState(#[from] Box<SnapshotStateError>),
}

/// SQLSTATE classes and codes worth waiting out: connection exceptions (08), operator
/// intervention such as a shutdown or a server still starting (57P), too many
/// connections (53300) and an object in use (55006: the slot is still held by the
/// walsender of a connection that just died).
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || code == "53300" || code == "55006"
}

impl SourceError {
    /// Whether running the source again later may succeed without anyone changing
    /// anything: the server or the broker is away for a while.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Database(e) => match e {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_sqlstate(&c)),
                _ => false,
            },
            SourceError::Replication(e) => {
                e.is_transient()
                    || matches!(e, pgwire_replication::PgWireError::Server(message)
                        if message.rsplit_once("SQLSTATE ").is_some_and(|(_, code)| transient_sqlstate(code.trim_end_matches(')'))))
            }
            SourceError::Emit(e) => e.is_transient(),
            SourceError::SnapshotState(_) => true,
            _ => false,
        }
    }
}

fn cells_text(cells: &[Cell]) -> RowText<'_> {
    cells
        .iter()
        .map(|c| match c {
            Cell::Null => Ok(None),
            Cell::UnchangedToast => Err(()),
            Cell::Text(b) | Cell::Binary(b) => Ok(std::str::from_utf8(b).ok()),
        })
        .collect()
}

/// The database name from connection options, for topic names.
fn database_name(options: &PgConnectOptions) -> String {
    options.get_database().unwrap_or("postgres").to_string()
}

/// The topics the source writes, one per captured table.
pub fn topics(config: &PostgresSourceConfig, region: &str) -> Vec<String> {
    let db = config
        .connection
        .options()
        .map(|o| database_name(&o))
        .unwrap_or_else(|_| "postgres".into());
    config
        .tables
        .iter()
        .map(|t| {
            let (schema, table) = t.split_once('.').unwrap_or(("public", t));
            topic_name(region, &db, schema, table)
        })
        .collect()
}

/// The PostgreSQL source behind the pipeline's [`Source`] seam.
pub struct PostgresSource {
    pub config: PostgresSourceConfig,
    pub context: SourceContext,
}

impl Source for PostgresSource {
    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), SourceFailure>> {
        Box::pin(async move {
            run(&self.config, &self.context, shutdown)
                .await
                .map_err(SourceFailure::from)
        })
    }
}

/// Runs the source until `shutdown`. After a transient failure it waits (0.5 s doubling
/// to 30 s, back to 0.5 s after a minute of running) and starts again from the slot's
/// confirmed position; a definite failure is returned. So is any failure before the
/// first connection to PostgreSQL ever succeeded: a wrong address or a server that is not
/// there at start-up is reported at once rather than retried in silence.
pub async fn run(
    config: &PostgresSourceConfig,
    ctx: &SourceContext,
    shutdown: CancellationToken,
) -> Result<(), SourceError> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut connected_once = false;
    loop {
        let started = std::time::Instant::now();
        let error = match run_once(config, ctx, &shutdown, &mut connected_once).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && connected_once && !shutdown.is_cancelled() => e,
            Err(e) => return Err(e),
        };
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let wait = backoff.next_wait();
        tracing::warn!(slot = %config.slot, %error, retry_in = ?wait, "PostgreSQL source interrupted; resuming from the slot's confirmed position");
        ctx.metrics
            .source_restarts
            .with_label_values(&[ctx.component.as_str()])
            .inc();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

async fn run_once(
    config: &PostgresSourceConfig,
    ctx: &SourceContext,
    shutdown: &CancellationToken,
    connected_once: &mut bool,
) -> Result<(), SourceError> {
    let options = config.connection.options()?;
    let mut conn = PgConnection::connect_with(&options).await?;
    *connected_once = true;
    ctx.metrics
        .ready
        .with_label_values(&[&ctx.component])
        .set(1);
    let mut slot: Option<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&config.slot)
            .fetch_optional(&mut conn)
            .await?;
    let tables =
        prerequisites::check(&mut conn, &config.tables, &config.slot, slot.is_some()).await?;
    let present: Vec<String> = tables.iter().map(|t| t.qualified()).collect();
    prerequisites::ensure_publication(&mut conn, &config.publication, &present).await?;
    if let Some((_, Some(status))) = &slot {
        if status == "lost" {
            return Err(SourceError::SlotLost {
                slot: config.slot.clone(),
            });
        }
    }
    let snapshot_state = SnapshotState::new(&ctx.region, &database_name(&options), &config.slot);
    if slot.is_some() && config.snapshot == SnapshotMode::Initial {
        let recorded = snapshot_state.read(&ctx.kafka).await.map_err(Box::new)?;
        if recorded.as_ref().map(|r| r.progress) != Some(Progress::Done) {
            tracing::warn!(slot = %config.slot, ?recorded, topic = snapshot_state.topic(), "the slot's initial snapshot never finished; dropping the slot to snapshot again");
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(&config.slot)
                .execute(&mut conn)
                .await?;
            slot = None;
        }
    }

    let password = config
        .connection
        .password
        .as_ref()
        .map(|p| p.expose().to_string())
        .unwrap_or_default();
    let replication = ReplicationConfig::new(
        options.get_host(),
        options.get_username(),
        password,
        database_name(&options),
        config.slot.clone(),
        config.publication.clone(),
    )
    .with_port(options.get_port())
    .with_tls(config.connection.replication_tls()?)
    .with_status_interval(config.status_interval.0);
    let start: Option<Lsn> = slot
        .as_ref()
        .and_then(|(lsn, _)| lsn.as_deref())
        .and_then(|l| l.parse().ok());
    let replication = match start {
        Some(lsn) => replication.with_start_lsn(WireLsn::from_u64(lsn.0)),
        None => replication,
    };
    let mut client = ReplicationClient::connect_gated(replication).await?;
    // Bounded in events, not bytes yet: the byte budget is read as ~1 KiB per event.
    let max_in_flight = (config.max_in_flight_bytes.0 / 1024).clamp(64, 100_000) as usize;
    let mut emitter = Emitter::new(ctx, database_name(&options), start, max_in_flight)?;

    if slot.is_none() {
        let export = if config.snapshot == SnapshotMode::Initial {
            "(SNAPSHOT 'export')"
        } else {
            "(SNAPSHOT 'nothing')"
        };
        // A snapshot row is as old as the slot's consistent point, not the time it is
        // read: every change streamed after the snapshot committed after this instant,
        // so no snapshot row carries a later time than a change that supersedes it.
        let consistent_ms = crate::emitter::now_ms();
        let rows = client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT \"{}\" LOGICAL pgoutput {export}",
                config.slot
            ))
            .await?;
        let text = |i: usize| {
            rows.first()
                .and_then(|r| r.get(i))
                .and_then(|c| c.as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let consistent: Lsn = text(1).and_then(|l| l.parse().ok()).unwrap_or_default();
        tracing::info!(slot = %config.slot, %consistent, "created replication slot");
        if let (SnapshotMode::Initial, Some(snapshot)) = (config.snapshot, text(2)) {
            snapshot_state
                .write(&ctx.kafka, &emitter.producer, Progress::Started, consistent)
                .await
                .map_err(Box::new)?;
            let finished = snapshot_tables(
                config,
                &options,
                &snapshot,
                &tables,
                (consistent, consistent_ms),
                &mut emitter,
                shutdown,
            )
            .await?;
            if !finished {
                return Ok(());
            }
            emitter.drain().await?;
            snapshot_state
                .write(&ctx.kafka, &emitter.producer, Progress::Done, consistent)
                .await
                .map_err(Box::new)?;
        }
    }
    drop(conn);
    client.start().await?;
    let _heartbeat = config
        .heartbeat_interval
        .map(|every| Heartbeat::start(options.clone(), every.0));
    let _slot_metrics = super::slot_metrics::SlotMetrics::start(
        options.clone(),
        config.slot.clone(),
        ctx.component.clone(),
        ctx.metrics.clone(),
        Duration::from_secs(5),
    );
    let keys = tables
        .iter()
        .map(|t| ((t.schema.clone(), t.name.clone()), t.primary_key.clone()))
        .collect();
    stream(
        &mut client,
        &mut emitter,
        RelationCache::with_keys(keys),
        shutdown,
    )
    .await?;
    emitter.drain().await?;
    if let Some(lsn) = emitter.tracker.confirmed() {
        client.update_applied_lsn(WireLsn::from_u64(lsn.0));
    }
    // The last status update goes out on the next status interval; wait for it.
    tokio::time::sleep(config.status_interval.0 + Duration::from_millis(200)).await;
    client.shutdown().await?;
    Ok(())
}

/// Writes a WAL record into the slot's database every interval, while the stream runs.
///
/// Keepalives already move the confirmed position while the captured tables are idle
/// (PostgreSQL 15 sends them past skipped transactions and other databases' WAL; see the
/// idle-slot test). The heartbeat is the usual extra for servers where a slot only moves
/// on records of its own database: a logical message there (pgoutput does not publish it)
/// that the stream then passes. Failures are logged and retried on the next tick.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(options: PgConnectOptions, every: Duration) -> Self {
        Self(tokio::spawn(async move {
            let mut conn: Option<PgConnection> = None;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if conn.is_none() {
                    conn = PgConnection::connect_with(&options).await.ok();
                }
                let Some(c) = conn.as_mut() else { continue };
                if let Err(error) = c
                    .execute("SELECT pg_logical_emit_message(false, 'strata.heartbeat', '')")
                    .await
                {
                    tracing::warn!(%error, "heartbeat failed; retrying on the next interval");
                    conn = None;
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn snapshot_tables(
    config: &PostgresSourceConfig,
    options: &PgConnectOptions,
    snapshot: &str,
    tables: &[prerequisites::TableInfo],
    (consistent, consistent_ms): (Lsn, i64),
    emitter: &mut Emitter<'_, Lsn>,
    shutdown: &CancellationToken,
) -> Result<bool, SourceError> {
    let mut conn = PgConnection::connect_with(options).await?;
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    conn.execute(
        format!(
            "SET TRANSACTION SNAPSHOT '{}'",
            snapshot.replace('\'', "''")
        )
        .as_str(),
    )
    .await?;
    conn.execute(
        "SET LOCAL TIME ZONE 'UTC'; SET LOCAL DateStyle = 'ISO'; SET LOCAL bytea_output = 'hex'",
    )
    .await?;
    // No DDL on the captured tables until the snapshot commits; a change made between
    // the prerequisite check and this lock is seen by reading the shapes again after it
    // (catalog reads are not bound to the exported snapshot).
    let names: Vec<String> = tables.iter().map(|t| t.qualified()).collect();
    let list = tables
        .iter()
        .map(|t| format!("\"{}\".\"{}\"", t.schema, t.name))
        .collect::<Vec<_>>()
        .join(", ");
    conn.execute(format!("LOCK TABLE {list} IN ACCESS SHARE MODE").as_str())
        .await?;
    let tables = prerequisites::check(&mut conn, &names, &config.slot, true).await?;
    let tx = emitter.tracker.begin();
    let mut index = 0u32;
    for table in &tables {
        let shape = TableShape {
            schema: table.schema.clone(),
            table: table.name.clone(),
            key: table.primary_key.clone(),
            columns: table
                .columns
                .iter()
                .map(|c| strata_pipeline::avro::types::Column {
                    nullable: !table.primary_key.contains(&c.name),
                    ..c.clone()
                })
                .collect(),
        };
        emitter.prepare(&shape, false).await?;
        let qualified = table.qualified();
        let labels = [config.slot.as_str(), qualified.as_str()];
        let done_gauge = emitter.ctx.metrics.snapshot_rows.with_label_values(&labels);
        let estimate_gauge = emitter
            .ctx
            .metrics
            .snapshot_rows_estimated
            .with_label_values(&labels);
        // The planner's estimate (-1 before the table was ever analysed).
        let estimate: i64 = sqlx::query_scalar(
            "SELECT GREATEST(reltuples, 0)::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
        )
        .bind(&table.schema)
        .bind(&table.name)
        .fetch_optional(&mut conn)
        .await?
        .unwrap_or(0);
        estimate_gauge.set(estimate);
        done_gauge.set(0);
        let select = shape
            .columns
            .iter()
            .map(|c| format!("\"{}\"::text", c.name.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ");
        conn.execute(
            format!(
                "DECLARE strata_snapshot NO SCROLL CURSOR FOR SELECT {select} FROM \"{}\".\"{}\"",
                table.schema, table.name
            )
            .as_str(),
        )
        .await?;
        let mut done = 0u64;
        loop {
            if shutdown.is_cancelled() {
                return Ok(false);
            }
            // Not a cached prepared statement: the cursor's columns differ per table.
            let rows = sqlx::query(&format!(
                "FETCH {} FROM strata_snapshot",
                config.snapshot_chunk_rows
            ))
            .persistent(false)
            .fetch_all(&mut conn)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let texts: Vec<Option<String>> = (0..shape.columns.len())
                    .map(|i| r.try_get::<Option<String>, _>(i))
                    .collect::<Result<_, _>>()?;
                let cells: RowText<'_> = texts.iter().map(|t| Ok(t.as_deref())).collect();
                let (after, unavailable) = events::row(&shape, &cells)?;
                let key = events::key(&shape, &after);
                let info = SourceInfo {
                    region: &emitter.ctx.region,
                    db: &emitter.db,
                    txid: None,
                    commit_time_ms: consistent_ms,
                    snapshot: "true",
                };
                let change = RowChange {
                    op: "r",
                    before: None,
                    after: Some(after),
                    unavailable,
                    position: Position {
                        commit_lsn: consistent,
                        index,
                    },
                };
                let value = events::envelope(&shape, change, &info, crate::emitter::now_ms());
                emitter.send(tx, &shape, Some(&key), &value).await?;
                index = index.wrapping_add(1);
            }
            done += rows.len() as u64;
            done_gauge.set(done as i64);
            estimate_gauge.set(estimate_gauge.get().max(done as i64));
            tracing::info!(table = %table.qualified(), rows = done, estimated = estimate_gauge.get(), "snapshot progress");
        }
        conn.execute("CLOSE strata_snapshot").await?;
    }
    conn.execute("COMMIT").await?;
    emitter.tracker.seal(tx, consistent);
    Ok(true)
}

struct OpenTx {
    id: TxId,
    commit_lsn: Lsn,
    xid: u32,
    commit_time_ms: i64,
    index: u32,
}

impl OpenTx {
    /// The position of the transaction's next change.
    fn next_position(&mut self) -> Position {
        let position = Position {
            commit_lsn: self.commit_lsn,
            index: self.index,
        };
        self.index += 1;
        position
    }

    fn info<'a>(&self, emitter: &'a Emitter<'_, Lsn>) -> SourceInfo<'a> {
        SourceInfo {
            region: &emitter.ctx.region,
            db: &emitter.db,
            txid: Some(self.xid),
            commit_time_ms: self.commit_time_ms,
            snapshot: "false",
        }
    }
}

async fn stream(
    client: &mut ReplicationClient,
    emitter: &mut Emitter<'_, Lsn>,
    mut relations: RelationCache,
    shutdown: &CancellationToken,
) -> Result<(), SourceError> {
    let mut open: Option<OpenTx> = None;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            settled = emitter.settle_one(), if emitter.in_flight() => {
                settled?;
                if let Some(lsn) = emitter.tracker.confirmed() {
                    client.update_applied_lsn(WireLsn::from_u64(lsn.0));
                }
                continue;
            }
            event = client.recv() => event?,
        };
        let Some(event) = event else { return Ok(()) };
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                open = Some(OpenTx {
                    id: emitter.tracker.begin(),
                    commit_lsn: Lsn(final_lsn.as_u64()),
                    xid,
                    commit_time_ms: commit_time_micros / 1000 + 946_684_800_000,
                    index: 0,
                });
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                if let Some(tx) = open.take() {
                    emitter.tracker.seal(tx.id, Lsn(end_lsn.as_u64()));
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if open.is_none() && !emitter.in_flight() {
                    let tx = emitter.tracker.begin();
                    emitter.tracker.seal(tx, Lsn(wal_end.as_u64()));
                }
                if let Some(lsn) = emitter.tracker.confirmed() {
                    client.update_applied_lsn(WireLsn::from_u64(lsn.0));
                }
            }
            ReplicationEvent::XLogData { data, .. } => {
                let message = pgoutput::decode(&data)?;
                handle_message(message, &mut relations, open.as_mut(), emitter).await?;
            }
            _ => {}
        }
    }
}

async fn handle_message(
    message: Message,
    relations: &mut RelationCache,
    open: Option<&mut OpenTx>,
    emitter: &mut Emitter<'_, Lsn>,
) -> Result<(), SourceError> {
    let changed = |oid: u32, relations: &RelationCache| {
        relations
            .get(oid)
            .cloned()
            .ok_or(SourceError::UnknownRelation(oid))
    };
    let (relation, op, old, new) = match message {
        Message::Relation(r) => {
            let (shape, change) = relations.update(&r, &|_, _| None)?;
            if change != super::relations::Change::Unchanged {
                tracing::info!(table = %format!("{}.{}", shape.schema, shape.table), ?change, "table schema");
                emitter.prepare(&shape, true).await?;
            }
            return Ok(());
        }
        Message::Insert { relation, new } => (relation, "c", None, Some(new)),
        Message::Update { relation, old, new } => {
            (relation, "u", old.map(|(_, cells)| cells), Some(new))
        }
        Message::Delete { relation, old } => (relation, "d", Some(old.1), None),
        Message::Truncate {
            relations: oids, ..
        } => {
            // One `t` event per table, without a key: it applies to every row.
            let Some(tx) = open else { return Ok(()) };
            for oid in oids {
                let shape = changed(oid, relations)?;
                let change = RowChange {
                    op: "t",
                    before: None,
                    after: None,
                    unavailable: Vec::new(),
                    position: tx.next_position(),
                };
                let value =
                    events::envelope(&shape, change, &tx.info(emitter), crate::emitter::now_ms());
                emitter.send(tx.id, &shape, None, &value).await?;
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let Some(tx) = open else { return Ok(()) };
    let shape = changed(relation, relations)?;
    let before = match &old {
        Some(cells) => Some(events::row(&shape, &cells_text(cells))?),
        None => None,
    };
    let after = match &new {
        Some(cells) => Some(events::row(&shape, &cells_text(cells))?),
        None => None,
    };
    let (key_source, unavailable) = match (&after, &before) {
        (Some((row, u)), _) => (row.clone(), u.clone()),
        (None, Some((row, _))) => (row.clone(), Vec::new()),
        (None, None) => return Ok(()),
    };
    let key = events::key(&shape, &key_source);
    let change = RowChange {
        op,
        before: before.map(|b| b.0),
        after: after.map(|a| a.0),
        unavailable,
        position: tx.next_position(),
    };
    let value = events::envelope(&shape, change, &tx.info(emitter), crate::emitter::now_ms());
    emitter.send(tx.id, &shape, Some(&key), &value).await?;
    Ok(())
}
