//! A PostgreSQL store of the claims domain (hot or warm tier): migrations, and
//! idempotent writes of change envelopes and claim analyses.
//!
//! Idempotence: every row carries `_position`, the source position of its latest change.
//! - Plain tables upsert with `ON CONFLICT (key) DO UPDATE … WHERE t._position <
//!   excluded._position`, so an older or repeated change never overwrites a newer one.
//! - Partitioned tables (warm) can't upsert across partitions (the key includes the date,
//!   and a corrected date moves the row): they delete the key's older versions, then insert
//!   unless a version at least as new exists.
//! - Deletes remove the row only if it is not newer than the delete.
//! - Analyses are guarded by their id (`<position>/<claim>`, later revisions sort later).
//!
//! Moves between tiers: a store configured with `evict_from` deletes each claim row it
//! writes from that schema, after writing it and in the same transaction, guarded by the
//! position, so a moving claim is never in neither store.
//!
//! Values are bound as text and cast to each column's type read from the catalog, so one
//! code path serves every column type. Columns a change marks unavailable (an unchanged
//! TOAST value no stage could fill) keep their stored value; the tables gain the columns
//! added upstream ([`schema`]).

use std::collections::{HashMap, HashSet};

use apache_avro::types::Value;
use futures::future::BoxFuture;
use sqlx::postgres::{PgPool, PgPoolOptions};
use strata_pipeline::processors::change::{Change, Row};
use strata_pipeline::runtime::processor::record_field;
use strata_pipeline::runtime::{Event, Rejected, Sink, SinkError, SinkRecord};

use crate::pg_connection::PgConnection;

mod analysis;
mod partitions;
pub mod schema;
mod statements;
mod values;

pub use values::to_text;

use statements::{delete_key, upsert, upsert_many};

const DDL: &str = include_str!("../../../sql/stores/001_tables.sql");

/// How a table is laid out in this store.
#[derive(Debug, Clone)]
struct Table {
    /// (column, SQL type as `format_type` prints it), catalog order, without `_position`.
    columns: Vec<(String, String)>,
    /// The row's identity (the primary key minus any partition column).
    key: Vec<String>,
    /// Column partitioning the table by month (warm claims and lines).
    partition_by: Option<String>,
}

pub struct PgStore {
    connection: PgConnection,
    schema: String,
    partitioned: bool,
    partitions_ahead: u32,
    evict_from: Option<String>,
    pool: Option<PgPool>,
    tables: HashMap<String, Table>,
    partitions: HashSet<(String, i32, u32)>,
    /// Monthly partitions that ended longer ago than this are detached (warm → cold).
    detach_after: Option<std::time::Duration>,
    last_detach: Option<std::time::Instant>,
    /// Where writer schemas are read, for the tables to follow the source's columns
    /// ([`schema`]); none: the tables keep the columns of their migrations.
    codec: Option<std::sync::Arc<strata_pipeline::avro::Codec>>,
    /// Writer schemas whose columns the tables already follow.
    followed: HashSet<u32>,
}

fn transient(e: sqlx::Error) -> SinkError {
    SinkError::Transient(e.to_string())
}

/// Whether a database error is the data's fault (so retrying cannot help).
fn is_data_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")))
}

impl PgStore {
    pub fn new(
        connection: PgConnection,
        schema: String,
        partitioned: bool,
        partitions_ahead: u32,
        evict_from: Option<String>,
    ) -> Self {
        Self {
            connection,
            schema,
            partitioned,
            partitions_ahead,
            evict_from,
            pool: None,
            tables: HashMap::new(),
            partitions: HashSet::new(),
            detach_after: None,
            last_detach: None,
            codec: None,
            followed: HashSet::new(),
        }
    }

    fn ddl(&self) -> String {
        let (claims_key, lines_key, claims_part, lines_part) = if self.partitioned {
            (
                "claim_id, service_date_from",
                "claim_id, line_number, service_date",
                "PARTITION BY RANGE (service_date_from)",
                "PARTITION BY RANGE (service_date)",
            )
        } else {
            ("claim_id", "claim_id, line_number", "", "")
        };
        DDL.replace("{schema}", &self.schema)
            .replace("{claims_key}", claims_key)
            .replace("{lines_key}", lines_key)
            .replace("{claims_partition}", claims_part)
            .replace("{lines_partition}", lines_part)
    }

    /// Connects, runs the migrations and reads the tables' layout.
    pub async fn open(&mut self) -> Result<(), SinkError> {
        let options = self
            .connection
            .options()
            .map_err(|e| SinkError::Fatal(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(transient)?;
        // Serialise concurrent migrations (two sinks on one database).
        let mut tx = pool.begin().await.map_err(transient)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('strata.store.migrations'))")
            .execute(&mut *tx)
            .await
            .map_err(transient)?;
        // One statement at a time: `raw_sql(..).execute` futures are not provably `Send`
        // (a known sqlx limitation).
        let ddl = self.ddl();
        let statements = ddl
            .split(";\n")
            .map(|s| {
                s.lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .filter(|s| !s.trim().is_empty());
        for statement in statements {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| SinkError::Fatal(format!("migrating schema {}: {e}", self.schema)))?;
        }
        tx.commit().await.map_err(transient)?;

        self.pool = Some(pool);
        self.read_layout().await
    }

    /// Writes one batch in one transaction; returns the records the store refused.
    pub async fn write(&mut self, records: &[SinkRecord]) -> Result<Vec<Rejected>, SinkError> {
        let pool = match &self.pool {
            Some(p) => p.clone(),
            None => {
                self.open().await?;
                self.pool
                    .clone()
                    .ok_or_else(|| SinkError::Fatal("no pool".into()))?
            }
        };
        if self.detach_after.is_some()
            && self
                .last_detach
                .is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(3600))
        {
            self.detach_old_partitions().await?;
        }
        self.follow(records).await?;
        // Fast path: the whole batch in one transaction. Only when a record is refused is
        // the batch redone with a savepoint per record, to write the rest without it.
        if let Some(done) = self.write_in_one(&pool, records, false).await? {
            return Ok(done);
        }
        self.write_in_one(&pool, records, true)
            .await?
            .ok_or_else(|| SinkError::Fatal("a record failed outside its savepoint".into()))
    }

    /// One transaction over `records`; `None` when a record was refused and `careful`
    /// (savepoint per record) is off.
    async fn write_in_one(
        &mut self,
        pool: &PgPool,
        records: &[SinkRecord],
        careful: bool,
    ) -> Result<Option<Vec<Rejected>>, SinkError> {
        let mut rejected = Vec::new();
        let mut tx = pool.begin().await.map_err(transient)?;
        let mut next = 0;
        while next < records.len() {
            let (index, record) = (next, &records[next]);
            next += 1;
            let result = if careful {
                sqlx::query("SAVEPOINT record")
                    .execute(&mut *tx)
                    .await
                    .map_err(transient)?;
                self.write_one(&mut tx, record).await
            } else {
                let (name, mut run, bulk) = self.upsert_run(&records[index..]);
                match (bulk && run.len() > 1, self.tables.get(&name)) {
                    // Consecutive plain upserts of one table go in one statement.
                    (true, Some(table)) => {
                        next = index + run.len();
                        let rows: Vec<(&Row, &str)> = run
                            .iter()
                            .filter_map(|c| Some((c.after?, c.position)))
                            .collect();
                        let qualified = format!("{}.{name}", self.schema);
                        upsert_many(&mut tx, &qualified, table, &rows).await
                    }
                    _ => match run.pop() {
                        Some(change) => self.write_change(&mut tx, change, &name).await,
                        None => self.write_one(&mut tx, record).await,
                    },
                }
            };
            let (code, message) = match result {
                Ok(()) => continue,
                Err(WriteError::Refused(code, message)) => (code, message),
                Err(WriteError::Db(e)) if is_data_error(&e) => ("store.refused", e.to_string()),
                Err(WriteError::Db(e)) => return Err(transient(e)),
            };
            if !careful {
                return Ok(None); // dropping `tx` rolls it back
            }
            sqlx::query("ROLLBACK TO SAVEPOINT record")
                .execute(&mut *tx)
                .await
                .map_err(transient)?;
            rejected.push(Rejected {
                index,
                code,
                message,
            });
        }
        tx.commit().await.map_err(transient)?;
        Ok(Some(rejected))
    }

    /// The parsed change at the start of `records` (none for a tombstone, an analysis or
    /// a record that does not parse) with its table's name; when it is a plain upsert of a
    /// table that takes upserts in bulk (no partition, no eviction), also the plain upserts
    /// of the same table that follow it, and `true`.
    fn upsert_run<'r>(&self, records: &'r [SinkRecord]) -> (String, Vec<Change<'r>>, bool) {
        let (mut name, mut run) = (String::new(), Vec::new());
        for record in records {
            let Some(value) = &record.value else { break };
            if record_field(value, "analysis_id").is_some() {
                break;
            }
            let Ok((change, this)) = parse_change(record, value) else {
                break;
            };
            // A change with unavailable (unchanged TOAST) columns updates the others only.
            let plain = change.after.is_some()
                && change.op != "t"
                && change.op != "d"
                && change.unavailable.is_empty();
            let evicts = self.evict_from.is_some() && this.starts_with("claim");
            let bulk = plain
                && !evicts
                && self
                    .tables
                    .get(&this)
                    .is_some_and(|t| t.partition_by.is_none());
            if run.is_empty() {
                name = this;
                run.push(change);
                if !bulk {
                    return (name, run, false);
                }
            } else if bulk && this == name {
                run.push(change);
            } else {
                break;
            }
        }
        let bulk = !run.is_empty();
        (name, run, bulk)
    }

    /// Deletes from this store every claim row in `records` that is not newer than the
    /// record: the row has moved to a colder store that now holds it.
    pub async fn evict(&mut self, records: &[SinkRecord]) -> Result<(), SinkError> {
        if self.pool.is_none() {
            self.open().await?;
        }
        let pool = self
            .pool
            .clone()
            .ok_or_else(|| SinkError::Fatal("no pool".into()))?;
        let mut tx = pool.begin().await.map_err(transient)?;
        for record in records {
            let Some(value) = &record.value else { continue };
            let Ok((change, name)) = parse_change(record, value) else {
                continue;
            };
            let (Some(after), Some(table), true) = (
                &change.after,
                self.tables.get(&name).cloned(),
                name.starts_with("claim"),
            ) else {
                continue;
            };
            let qualified = format!("{}.{name}", self.schema);
            match delete_key(&mut tx, &qualified, &table, after, change.position, "<=").await {
                Ok(()) | Err(WriteError::Refused(..)) => {}
                Err(WriteError::Db(e)) => return Err(transient(e)),
            }
        }
        tx.commit().await.map_err(transient)?;
        Ok(())
    }

    async fn write_one(
        &mut self,
        conn: &mut sqlx::PgConnection,
        record: &SinkRecord,
    ) -> Result<(), WriteError> {
        let Some(value) = &record.value else {
            return Ok(()); // tombstones carry nothing for a store
        };
        if record_field(value, "analysis_id").is_some() {
            return self.write_analysis(conn, value).await;
        }
        let (change, name) = parse_change(record, value)?;
        self.write_change(conn, change, &name).await
    }

    /// Writes one parsed change of table `name`.
    async fn write_change(
        &mut self,
        conn: &mut sqlx::PgConnection,
        change: Change<'_>,
        name: &str,
    ) -> Result<(), WriteError> {
        let table = self.tables.get(name).cloned().ok_or_else(|| {
            WriteError::Refused(
                "store.unknown_table",
                format!("{} has no table {}.{name}", self.schema, self.schema),
            )
        })?;
        let qualified = format!("{}.{name}", self.schema);
        match (change.op, &change.after) {
            ("t", _) => {
                sqlx::query(&format!("DELETE FROM {qualified} WHERE _position < $1"))
                    .bind(change.position)
                    .execute(&mut *conn)
                    .await?;
            }
            ("d", _) | (_, None) => {
                let row = change.before.unwrap_or_default();
                delete_key(conn, &qualified, &table, row, change.position, "<=").await?;
            }
            (_, Some(after)) => {
                if let Some(col) = &table.partition_by {
                    self.ensure_partition(conn, name, after, col).await?;
                }
                upsert(conn, &qualified, &table, &change).await?;
                if let (Some(evict), true) = (&self.evict_from, name.starts_with("claim")) {
                    let old = format!("{evict}.{name}");
                    delete_key(conn, &old, &table, after, change.position, "<=").await?;
                }
            }
        }
        Ok(())
    }
}

impl Sink for PgStore {
    fn open(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(PgStore::open(self))
    }

    fn write<'a>(
        &'a mut self,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<Vec<Rejected>, SinkError>> {
        Box::pin(PgStore::write(self, records))
    }
}

impl Table {
    /// The SQL type of `column` (text when the catalog does not list it).
    fn column_type(&self, column: &str) -> &str {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, t)| t.as_str())
            .unwrap_or("text")
    }
}

/// The change a record carries and its table's name (without the schema).
fn parse_change<'r>(
    record: &'r SinkRecord,
    value: &'r Value,
) -> Result<(Change<'r>, String), WriteError> {
    let event = Event {
        topic: &record.topic,
        partition: record.partition,
        offset: record.offset,
        timestamp_ms: 0,
        key: record.key.as_ref(),
        key_schema_id: None,
        value: Some(value),
        value_schema_id: None,
    };
    let change = Change::from_event(&event).map_err(|r| WriteError::Refused(r.code, r.message))?;
    let name = change
        .table
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string();
    Ok((change, name))
}

pub(super) enum WriteError {
    Refused(&'static str, String),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        WriteError::Db(e)
    }
}
