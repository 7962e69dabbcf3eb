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
//! code path serves every column type.

use std::collections::{HashMap, HashSet};

use apache_avro::types::Value;
use chrono::{Datelike, NaiveDate};
use futures::future::BoxFuture;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row as _;
use strata_pipeline::processors::change::{column, Change, Row};
use strata_pipeline::runtime::processor::record_field;
use strata_pipeline::runtime::{Event, Rejected, Sink, SinkError, SinkRecord};

use crate::pg_connection::PgConnection;

const DDL: &str = include_str!("../../sql/stores/001_tables.sql");

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
        }
    }

    /// Detaches monthly partitions that ended longer than `age` ago (checked at most
    /// hourly): their claims have aged into the cold archive.
    pub fn detach_after(mut self, age: Option<std::time::Duration>) -> Self {
        self.detach_after = age;
        self
    }

    /// Detaches the partitions that are due; returns their names.
    pub async fn detach_old_partitions(&mut self) -> Result<Vec<String>, SinkError> {
        let (Some(age), Some(pool)) = (self.detach_after, self.pool.clone()) else {
            return Ok(Vec::new());
        };
        self.last_detach = Some(std::time::Instant::now());
        let cutoff = chrono::Utc::now().date_naive()
            - chrono::Duration::from_std(age).unwrap_or_else(|_| chrono::Duration::days(36_500));
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT p.relname::text, c.relname::text FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
             JOIN pg_namespace n ON n.oid = p.relnamespace WHERE n.nspname = $1",
        )
        .bind(&self.schema)
        .fetch_all(&pool)
        .await
        .map_err(transient)?;
        let mut detached = Vec::new();
        for (parent, child) in rows {
            // Partitions are named `<table>_y<year>m<month>` by `ensure_partition`.
            let Some((year, month)) = child
                .rsplit_once("_y")
                .and_then(|(_, ym)| ym.split_once('m'))
                .and_then(|(y, m)| Some((y.parse::<i32>().ok()?, m.parse::<u32>().ok()?)))
            else {
                continue;
            };
            let Some(end) = NaiveDate::from_ymd_opt(year, month, 1)
                .and_then(|d| d.checked_add_months(chrono::Months::new(1)))
            else {
                continue;
            };
            if end > cutoff {
                continue;
            }
            sqlx::query(&format!(
                "ALTER TABLE {s}.{parent} DETACH PARTITION {s}.{child}",
                s = self.schema
            ))
            .execute(&pool)
            .await
            .map_err(transient)?;
            tracing::info!(schema = %self.schema, partition = %child, "detached a partition that aged into the cold tier");
            detached.push(child);
        }
        Ok(detached)
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
        // (sqlx issue 3150).
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

        let rows = sqlx::query(
            "SELECT c.relname::text AS tbl, a.attname::text AS col,
                    format_type(a.atttypid, a.atttypmod) AS ty,
                    coalesce(a.attnum = ANY(i.indkey), false) AS in_key
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
             ORDER BY c.relname, a.attnum",
        )
        .bind(&self.schema)
        .fetch_all(&pool)
        .await
        .map_err(transient)?;
        let mut tables: HashMap<String, Table> = HashMap::new();
        for row in rows {
            let (table, col, ty, in_key): (String, String, String, bool) = (
                row.get("tbl"),
                row.get("col"),
                row.get("ty"),
                row.get("in_key"),
            );
            let t = tables.entry(table.clone()).or_insert_with(|| Table {
                columns: Vec::new(),
                key: Vec::new(),
                partition_by: None,
            });
            if col.starts_with('_') {
                continue;
            }
            let partition_col = match (self.partitioned, table.as_str()) {
                (true, "claims") => Some("service_date_from"),
                (true, "claim_lines") => Some("service_date"),
                _ => None,
            };
            if in_key && partition_col != Some(col.as_str()) {
                t.key.push(col.clone());
            }
            t.partition_by = partition_col.map(str::to_string);
            t.columns.push((col, ty));
        }
        self.tables = tables;
        self.pool = Some(pool);
        Ok(())
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
            let plain = change.after.is_some() && change.op != "t" && change.op != "d";
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
                upsert(conn, &qualified, &table, after, change.position).await?;
                if let (Some(evict), true) = (&self.evict_from, name.starts_with("claim")) {
                    let old = format!("{evict}.{name}");
                    delete_key(conn, &old, &table, after, change.position, "<=").await?;
                }
            }
        }
        Ok(())
    }

    async fn write_analysis(
        &self,
        conn: &mut sqlx::PgConnection,
        value: &Value,
    ) -> Result<(), WriteError> {
        let text = |name: &str| match record_field(value, name) {
            Some(Value::String(s)) | Some(Value::Enum(_, s)) => Some(s.clone()),
            _ => None,
        };
        let claim_id = match record_field(value, "claim_id") {
            Some(Value::Long(id)) => *id,
            _ => {
                return Err(WriteError::Refused(
                    "analysis.no_claim_id",
                    "analysis without claim_id".into(),
                ))
            }
        };
        let score = match record_field(value, "score") {
            Some(Value::Double(s)) => Some(*s),
            _ => None,
        };
        let reasons: Vec<serde_json::Value> = match record_field(value, "reasons") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|r| {
                    let f = |n: &str| record_field(r, n);
                    serde_json::json!({
                        "code": match f("code") { Some(Value::String(s)) => s.clone(), _ => String::new() },
                        "contribution": match f("contribution") { Some(Value::Double(d)) => *d, _ => 0.0 },
                        "detail": match f("detail") { Some(Value::String(s)) => s.clone(), _ => String::new() },
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let event_ms = match record_field(value, "event_time_ms") {
            Some(Value::TimestampMillis(ms)) | Some(Value::Long(ms)) => Some(*ms),
            _ => None,
        };
        let id = text("analysis_id").unwrap_or_default();
        sqlx::query(&format!(
            "INSERT INTO {s}.claim_analysis AS t (claim_id, analysis_id, position, claim_class, score, routing, reasons, event_time, _position)
             VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, to_timestamp($8::double precision / 1000), $2)
             ON CONFLICT (claim_id) DO UPDATE SET analysis_id = excluded.analysis_id, position = excluded.position,
               claim_class = excluded.claim_class, score = excluded.score, routing = excluded.routing,
               reasons = excluded.reasons, event_time = excluded.event_time, _position = excluded._position,
               _written_at = now()
             WHERE t._position < excluded._position",
            s = self.schema
        ))
        .bind(claim_id)
        .bind(&id)
        .bind(text("position"))
        .bind(text("claim_class"))
        .bind(score)
        .bind(text("routing"))
        .bind(serde_json::Value::Array(reasons).to_string())
        .bind(event_ms.map(|m| m as f64))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Creates the month's partition of the row (and `partitions_ahead` after it).
    async fn ensure_partition(
        &mut self,
        conn: &mut sqlx::PgConnection,
        table: &str,
        row: &Row,
        col: &str,
    ) -> Result<(), WriteError> {
        let Some(Value::Date(days)) = column(row, col) else {
            return Err(WriteError::Refused(
                "store.no_partition_date",
                format!("{table}.{col} is missing; the warm store partitions by it"),
            ));
        };
        let date = NaiveDate::from_num_days_from_ce_opt(*days + 719_163).unwrap_or_default();
        for ahead in 0..=self.partitions_ahead {
            let month0 = date.month0() + ahead;
            let (year, month) = (date.year() + (month0 / 12) as i32, month0 % 12 + 1);
            if !self.partitions.insert((table.to_string(), year, month)) {
                continue;
            }
            let from = NaiveDate::from_ymd_opt(year, month, 1).unwrap_or_default();
            let to = from
                .checked_add_months(chrono::Months::new(1))
                .unwrap_or(from);
            sqlx::query(&format!(
                "CREATE TABLE IF NOT EXISTS {s}.{table}_y{year}m{month:02} PARTITION OF {s}.{table} FOR VALUES FROM ('{from}') TO ('{to}')",
                s = self.schema
            ))
            .execute(&mut *conn)
            .await?;
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

enum WriteError {
    Refused(&'static str, String),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        WriteError::Db(e)
    }
}

fn key_clause(table: &Table, first: usize) -> String {
    table
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let ty = table.column_type(k);
            format!("{k} = ${}::{ty}", first + i)
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

async fn delete_key(
    conn: &mut sqlx::PgConnection,
    qualified: &str,
    table: &Table,
    row: &Row,
    position: &str,
    guard: &str,
) -> Result<(), WriteError> {
    let sql = format!(
        "DELETE FROM {qualified} WHERE {} AND _position {guard} $1",
        key_clause(table, 2)
    );
    let mut query = sqlx::query(&sql).bind(position);
    for k in &table.key {
        let ty = table.column_type(k);
        let v = column(row, k).and_then(|v| to_text(v, ty));
        if v.is_none() {
            return Err(WriteError::Refused(
                "store.no_key",
                format!("{qualified}: key column {k} is missing"),
            ));
        }
        query = query.bind(v);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

async fn upsert(
    conn: &mut sqlx::PgConnection,
    qualified: &str,
    table: &Table,
    row: &Row,
    position: &str,
) -> Result<(), WriteError> {
    let cols: Vec<&str> = table.columns.iter().map(|(c, _)| c.as_str()).collect();
    let params: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::{ty}", i + 1))
        .collect();
    let pos_param = table.columns.len() + 1;
    let sql = if table.partition_by.is_some() {
        // Older versions of the key go first (maybe from another partition); then the
        // row goes in unless a version at least as new is there.
        delete_key(conn, qualified, table, row, position, "<").await?;
        format!(
            "INSERT INTO {qualified} ({cols}, _position) SELECT {params}, ${pos_param}
             WHERE NOT EXISTS (SELECT 1 FROM {qualified} WHERE {key} AND _position >= ${pos_param})",
            cols = cols.join(", "),
            params = params.join(", "),
            key = key_clause(table, pos_param + 1),
        )
    } else {
        let updates: Vec<String> = cols.iter().map(|c| format!("{c} = excluded.{c}")).collect();
        format!(
            "INSERT INTO {qualified} AS t ({cols}, _position) VALUES ({params}, ${pos_param})
             ON CONFLICT ({key}) DO UPDATE SET {updates}, _position = excluded._position, _written_at = now()
             WHERE t._position < excluded._position",
            cols = cols.join(", "),
            params = params.join(", "),
            key = table.key.join(", "),
            updates = updates.join(", "),
        )
    };
    let mut query = sqlx::query(&sql);
    for (c, ty) in &table.columns {
        query = query.bind(column(row, c).and_then(|v| to_text(v, ty)));
    }
    query = query.bind(position);
    if table.partition_by.is_some() {
        for k in &table.key {
            let ty = table.column_type(k);
            query = query.bind(column(row, k).and_then(|v| to_text(v, ty)));
        }
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// Upserts many rows of one table in one statement: each column as a text array,
/// unnested and cast. One statement may not touch a row twice, so only the newest
/// version of each key is sent; the position guard is the same as [`upsert`]'s.
async fn upsert_many(
    conn: &mut sqlx::PgConnection,
    qualified: &str,
    table: &Table,
    rows: &[(&Row, &str)],
) -> Result<(), WriteError> {
    let text = |row: &Row, c: &str, ty: &str| column(row, c).and_then(|v| to_text(v, ty));
    let mut newest: HashMap<Vec<String>, usize> = HashMap::new();
    for (i, (row, position)) in rows.iter().enumerate() {
        let mut key = Vec::with_capacity(table.key.len());
        for k in &table.key {
            key.push(text(row, k, table.column_type(k)).ok_or_else(|| {
                WriteError::Refused(
                    "store.no_key",
                    format!("{qualified}: key column {k} is missing"),
                )
            })?);
        }
        let slot = newest.entry(key).or_insert(i);
        if rows[*slot].1 < *position {
            *slot = i;
        }
    }
    let mut keep: Vec<usize> = newest.into_values().collect();
    keep.sort_unstable();

    let mut columns: Vec<Vec<Option<String>>> =
        vec![Vec::with_capacity(keep.len()); table.columns.len()];
    let mut positions = Vec::with_capacity(keep.len());
    for &i in &keep {
        let (row, position) = rows[i];
        for (values, (c, ty)) in columns.iter_mut().zip(&table.columns) {
            values.push(text(row, c, ty));
        }
        positions.push(position.to_string());
    }
    let n = table.columns.len();
    let cols: Vec<&str> = table.columns.iter().map(|(c, _)| c.as_str()).collect();
    let casts: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("u.c{i}::{ty}"))
        .collect();
    let arrays: Vec<String> = (1..=n + 1).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let updates: Vec<String> = cols.iter().map(|c| format!("{c} = excluded.{c}")).collect();
    let sql = format!(
        "INSERT INTO {qualified} AS t ({cols}, _position)
         SELECT {casts}, u.pos FROM UNNEST({arrays}) AS u({names}, pos)
         ON CONFLICT ({key}) DO UPDATE SET {updates}, _position = excluded._position, _written_at = now()
         WHERE t._position < excluded._position",
        cols = cols.join(", "),
        casts = casts.join(", "),
        arrays = arrays.join(", "),
        names = names.join(", "),
        key = table.key.join(", "),
        updates = updates.join(", "),
    );
    let mut query = sqlx::query(&sql);
    for values in columns {
        query = query.bind(values);
    }
    query.bind(positions).execute(&mut *conn).await?;
    Ok(())
}

/// The text PostgreSQL parses back into `v` for a column of type `ty`.
pub fn to_text(v: &Value, ty: &str) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Union(_, inner) => return to_text(inner, ty),
        Value::Boolean(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Long(l) => l.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(d) => d.to_string(),
        Value::String(s) | Value::Enum(_, s) => s.clone(),
        Value::Uuid(u) => u.to_string(),
        Value::Date(d) => NaiveDate::from_num_days_from_ce_opt(*d + 719_163)?.to_string(),
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => {
            chrono::DateTime::from_timestamp_micros(*us)?.to_rfc3339()
        }
        Value::TimestampMillis(ms) | Value::LocalTimestampMillis(ms) => {
            chrono::DateTime::from_timestamp_millis(*ms)?.to_rfc3339()
        }
        Value::Decimal(d) => {
            let scale = ty
                .split_once(',')
                .and_then(|(_, s)| s.trim_end_matches(')').trim().parse::<u32>().ok())
                .unwrap_or(0);
            decimal_text(&Vec::<u8>::try_from(d).ok()?, scale)?
        }
        Value::Bytes(b) | Value::Fixed(_, b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("\\x{hex}")
        }
        Value::Array(items) => {
            let inner = ty.trim_end_matches("[]");
            let parts: Vec<String> = items
                .iter()
                .map(|i| match to_text(i, inner) {
                    None => "NULL".into(),
                    Some(t) => format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\"")),
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        other => format!("{other:?}"),
    })
}

/// Two's-complement big-endian unscaled bytes as a decimal string with `scale` digits.
fn decimal_text(bytes: &[u8], scale: u32) -> Option<String> {
    if bytes.len() > 16 {
        return None;
    }
    let mut unscaled: i128 = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        -1
    } else {
        0
    };
    for b in bytes {
        unscaled = (unscaled << 8) | i128::from(*b);
    }
    let negative = unscaled < 0;
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let sign = if negative { "-" } else { "" };
    Some(if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_as_postgres_text() {
        assert_eq!(decimal_text(&[0x30, 0x39], 2).as_deref(), Some("123.45"));
        assert_eq!(decimal_text(&[0xff, 0x38], 2).as_deref(), Some("-2.00"));
        assert_eq!(decimal_text(&[0x05], 3).as_deref(), Some("0.005"));
        assert_eq!(
            to_text(&Value::Date(0), "date").as_deref(),
            Some("1970-01-01")
        );
        let arr = Value::Array(vec![
            Value::String("E11.9".into()),
            Value::String("a\"b".into()),
        ]);
        assert_eq!(
            to_text(&arr, "text[]").as_deref(),
            Some(r#"{"E11.9","a\"b"}"#)
        );
        assert_eq!(
            to_text(&Value::Union(0, Box::new(Value::Null)), "text"),
            None
        );
        assert_eq!(
            to_text(
                &Value::TimestampMicros(1_000_000),
                "timestamp with time zone"
            )
            .as_deref(),
            Some("1970-01-01T00:00:01+00:00")
        );
    }
}
