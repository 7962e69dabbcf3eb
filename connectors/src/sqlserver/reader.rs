//! [`CdcReader`] over TDS: the CDC catalog and change functions queried through tiberius.
//!
//! Queries (parameters bound, never interpolated — except the capture instance's name in
//! `cdc.fn_cdc_get_all_changes_<instance>`, which is checked to be an identifier first):
//! - `sys.databases.is_cdc_enabled` before anything else (CDC disabled has its own error);
//! - `cdc.change_tables` for capture instances and their start LSNs;
//! - `sys.fn_cdc_get_max_lsn()`, `sys.fn_cdc_get_min_lsn(@P1)`;
//! - `cdc.fn_cdc_get_all_changes_<instance>(@P1, @P2, N'all update old')`;
//! - the change table's columns (`sys.columns` of `cdc.<instance>_CT`, key columns from
//!   `cdc.index_columns`) for the Avro schema;
//! - the snapshot: `SET TRANSACTION ISOLATION LEVEL SNAPSHOT; BEGIN TRANSACTION`, then
//!   `sys.fn_cdc_get_max_lsn()` as the transaction's first read (it fixes the view), a
//!   `SELECT` of each table's captured columns, `COMMIT`.
//!
//! Each statement starts with a tag comment (`/* STRATA CDC_MAX_LSN */`): it names the
//! query in SQL Server's own views (Query Store, `sys.dm_exec_requests`) for the DBA of
//! a legacy server, and it is what the TDS stand-in of tests/sqlserver_wire matches.
//! Identifiers stay lower-case, as case-sensitive collations need.
//!
//! Server errors are split: permission denied (229, 230, 297, 916), a failed login
//! (18456), snapshot isolation not allowed (3952) and missing objects (208: a dropped
//! capture instance) are definite, with their own messages; I/O and the rest are
//! transient and retried by the source.

use std::ops::DerefMut;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use tiberius::{Client, ColumnData};
use tokio::net::TcpStream;
use tokio_util::compat::Compat;

use super::lsn::{Lsn, Operation, Position};
use super::stream::{CaptureInstance, CapturedColumn, CdcError, CdcReader, ChangeRow};

/// The statements, each with its tag.
pub mod sql {
    pub const CDC_ENABLED: &str = "/* STRATA CDC_ENABLED */ SELECT CAST(is_cdc_enabled AS int) FROM sys.databases WHERE name = DB_NAME()";
    pub const CAPTURE_INSTANCES: &str = "/* STRATA CDC_INSTANCES */ SELECT OBJECT_SCHEMA_NAME(source_object_id) + N'.' + OBJECT_NAME(source_object_id), capture_instance, start_lsn FROM cdc.change_tables";
    pub const MAX_LSN: &str = "/* STRATA CDC_MAX_LSN */ SELECT sys.fn_cdc_get_max_lsn()";
    pub const MIN_LSN: &str = "/* STRATA CDC_MIN_LSN */ SELECT sys.fn_cdc_get_min_lsn(@P1)";
    /// The tag of the change query of `instance` (`/* STRATA CDC_CHANGES DBO_CLAIMS */`).
    pub fn changes_tag(instance: &str) -> String {
        format!("/* STRATA CDC_CHANGES {} */", instance.to_uppercase())
    }

    /// The change query of one capture instance (its name checked by the caller).
    pub fn changes(instance: &str) -> String {
        format!(
            "{} SELECT * FROM cdc.fn_cdc_get_all_changes_{instance}(@P1, @P2, N'all update old') ORDER BY __$start_lsn, __$seqval, __$operation",
            changes_tag(instance)
        )
    }

    /// A capture instance's columns: name, base type, precision, scale, key (0/1).
    pub const COLUMNS: &str = "/* STRATA CDC_COLUMNS */ SELECT c.name, TYPE_NAME(c.system_type_id), CAST(c.precision AS int), CAST(c.scale AS int), CAST(CASE WHEN ic.column_name IS NULL THEN 0 ELSE 1 END AS int) FROM cdc.change_tables ct JOIN sys.columns c ON c.object_id = ct.object_id LEFT JOIN cdc.index_columns ic ON ic.object_id = ct.object_id AND ic.column_name = c.name WHERE ct.capture_instance = @P1 AND LEFT(c.name, 3) <> N'__$' ORDER BY c.column_id";
    pub const SNAPSHOT_BEGIN: &str = "/* STRATA CDC_SNAPSHOT_BEGIN */ SET TRANSACTION ISOLATION LEVEL SNAPSHOT; BEGIN TRANSACTION";
    pub const SNAPSHOT_END: &str = "/* STRATA CDC_SNAPSHOT_END */ COMMIT TRANSACTION; SET TRANSACTION ISOLATION LEVEL READ COMMITTED";

    /// `[name]` with `]` doubled: a quoted identifier.
    pub fn quote(name: &str) -> String {
        format!("[{}]", name.replace(']', "]]"))
    }

    /// The tag of the snapshot query of `table` (`/* STRATA CDC_SNAPSHOT DBO.CLAIMS */`).
    pub fn snapshot_tag(table: &str) -> String {
        format!("/* STRATA CDC_SNAPSHOT {} */", table.to_uppercase())
    }

    /// The snapshot query of `schema.table`, its columns in the given order.
    pub fn snapshot(table: &str, columns: &[String]) -> String {
        let (schema, name) = table.split_once('.').unwrap_or(("dbo", table));
        let list = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{} SELECT {list} FROM {}.{}",
            snapshot_tag(table),
            quote(schema),
            quote(name)
        )
    }
}

/// A change row's captured columns, by name, as tiberius decoded them.
pub type Columns = Vec<(String, ColumnData<'static>)>;

/// A TDS client over TCP (tiberius runs TLS inside it).
pub type TdsClient = Client<Compat<TcpStream>>;

/// The reader over a client it owns or borrows (a pooled connection).
pub struct TdsReader<C> {
    client: C,
    database: String,
}

impl<C: DerefMut<Target = TdsClient> + Send> TdsReader<C> {
    pub fn new(client: C, database: &str) -> Self {
        Self {
            client,
            database: database.to_string(),
        }
    }

    async fn rows(
        &mut self,
        sql: &str,
        params: &[&dyn tiberius::ToSql],
    ) -> Result<Vec<tiberius::Row>, CdcError> {
        let stream = self.client.query(sql, params).await.map_err(classify)?;
        stream.into_first_result().await.map_err(classify)
    }

    /// Runs a batch of statements without parameters, reading every answer.
    async fn execute(&mut self, sql: &str) -> Result<(), CdcError> {
        let stream = self.client.simple_query(sql).await.map_err(classify)?;
        stream.into_results().await.map_err(classify)?;
        Ok(())
    }

    /// Names snapshot isolation errors after the database.
    fn in_database(&self, e: CdcError) -> CdcError {
        match e {
            CdcError::SnapshotIsolationOff { .. } => CdcError::SnapshotIsolationOff {
                database: self.database.clone(),
            },
            other => other,
        }
    }
}

/// Definite or transient, by what the server said.
pub fn classify(e: tiberius::error::Error) -> CdcError {
    match &e {
        tiberius::error::Error::Server(token) => match token.code() {
            229 | 230 | 297 | 916 => CdcError::Permission(token.message().to_string()),
            18456 => CdcError::Permission(format!(
                "{} (check the source's username and password)",
                token.message()
            )),
            3952 => CdcError::SnapshotIsolationOff {
                database: String::new(),
            },
            208 => CdcError::Protocol(format!(
                "{} (a capture instance dropped while Strata read it?)",
                token.message()
            )),
            _ => CdcError::Transient(e.to_string()),
        },
        tiberius::error::Error::Protocol(_)
        | tiberius::error::Error::Encoding(_)
        | tiberius::error::Error::Conversion(_) => CdcError::Protocol(e.to_string()),
        _ => CdcError::Transient(e.to_string()),
    }
}

fn lsn_of(row: &tiberius::Row, index: usize, what: &str) -> Result<Lsn, CdcError> {
    match row.try_get::<&[u8], _>(index) {
        Ok(Some(bytes)) => Lsn::from_bytes(bytes)
            .ok_or_else(|| CdcError::Protocol(format!("{what} is {} bytes, not 10", bytes.len()))),
        Ok(None) => Ok(Lsn::ZERO),
        Err(e) => Err(CdcError::Protocol(format!("{what}: {e}"))),
    }
}

/// A capture instance name as SQL Server makes them: letters, digits and `_`.
fn checked_instance(name: &str) -> Result<&str, CdcError> {
    if !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(name)
    } else {
        Err(CdcError::Protocol(format!(
            "capture instance name `{name}` is not an identifier"
        )))
    }
}

impl<C: DerefMut<Target = TdsClient> + Send> CdcReader for TdsReader<C> {
    type Row = Columns;

    fn capture_instances(&mut self) -> BoxFuture<'_, Result<Vec<CaptureInstance>, CdcError>> {
        Box::pin(async move {
            let enabled = self.rows(sql::CDC_ENABLED, &[]).await?;
            let on = enabled
                .first()
                .and_then(|r| r.try_get::<i32, _>(0).ok().flatten())
                == Some(1);
            if !on {
                return Err(CdcError::DatabaseNotEnabled {
                    database: self.database.clone(),
                });
            }
            let rows = self.rows(sql::CAPTURE_INSTANCES, &[]).await?;
            rows.iter()
                .map(|row| {
                    let text = |i: usize| {
                        row.try_get::<&str, _>(i)
                            .ok()
                            .flatten()
                            .map(str::to_string)
                            .ok_or_else(|| {
                                CdcError::Protocol("cdc.change_tables row without a name".into())
                            })
                    };
                    Ok(CaptureInstance {
                        table: text(0)?,
                        name: text(1)?,
                        start_lsn: lsn_of(row, 2, "start_lsn")?,
                    })
                })
                .collect()
        })
    }

    fn max_lsn(&mut self) -> BoxFuture<'_, Result<Lsn, CdcError>> {
        Box::pin(async move {
            let rows = self.rows(sql::MAX_LSN, &[]).await?;
            let row = rows
                .first()
                .ok_or_else(|| CdcError::Protocol("no answer to fn_cdc_get_max_lsn".into()))?;
            lsn_of(row, 0, "max LSN")
        })
    }

    fn min_lsn<'a>(&'a mut self, instance: &'a str) -> BoxFuture<'a, Result<Lsn, CdcError>> {
        Box::pin(async move {
            let rows = self.rows(sql::MIN_LSN, &[&instance]).await?;
            let row = rows
                .first()
                .ok_or_else(|| CdcError::Protocol("no answer to fn_cdc_get_min_lsn".into()))?;
            lsn_of(row, 0, "min LSN")
        })
    }

    fn changes<'a>(
        &'a mut self,
        instance: &'a str,
        from: Lsn,
        to: Lsn,
    ) -> BoxFuture<'a, Result<Vec<ChangeRow<Columns>>, CdcError>> {
        Box::pin(async move {
            let query = sql::changes(checked_instance(instance)?);
            let (lo, hi) = (from.0.to_vec(), to.0.to_vec());
            let rows = self.rows(&query, &[&lo, &hi]).await?;
            rows.into_iter().map(change_row).collect()
        })
    }

    fn columns<'a>(
        &'a mut self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CapturedColumn>, CdcError>> {
        Box::pin(async move {
            let rows = self.rows(sql::COLUMNS, &[&instance]).await?;
            rows.iter().map(captured_column).collect()
        })
    }

    fn begin_snapshot(&mut self) -> BoxFuture<'_, Result<Lsn, CdcError>> {
        Box::pin(async move {
            self.execute(sql::SNAPSHOT_BEGIN).await?;
            let rows = self
                .rows(sql::MAX_LSN, &[])
                .await
                .map_err(|e| self.in_database(e))?;
            let row = rows
                .first()
                .ok_or_else(|| CdcError::Protocol("no answer to fn_cdc_get_max_lsn".into()))?;
            lsn_of(row, 0, "max LSN")
        })
    }

    fn snapshot_rows<'a>(
        &'a mut self,
        table: &'a str,
        columns: &'a [String],
    ) -> BoxStream<'a, Result<Columns, CdcError>> {
        let database = self.database.clone();
        let client = &mut *self.client;
        futures::stream::once(async move {
            let stream = client
                .query(sql::snapshot(table, columns), &[])
                .await
                .map_err(classify)?;
            Ok::<_, CdcError>(stream.into_row_stream().map(|row| {
                let row = row.map_err(classify)?;
                let names: Vec<String> =
                    row.columns().iter().map(|c| c.name().to_string()).collect();
                Ok(names.into_iter().zip(row).collect())
            }))
        })
        .try_flatten()
        .map_err(move |e| match e {
            CdcError::SnapshotIsolationOff { .. } => CdcError::SnapshotIsolationOff {
                database: database.clone(),
            },
            other => other,
        })
        .boxed()
    }

    fn end_snapshot(&mut self) -> BoxFuture<'_, Result<(), CdcError>> {
        Box::pin(async move { self.execute(sql::SNAPSHOT_END).await })
    }
}

/// One row of [`sql::COLUMNS`]: decimals get their precision and scale.
fn captured_column(row: &tiberius::Row) -> Result<CapturedColumn, CdcError> {
    let text = |i: usize| {
        row.try_get::<&str, _>(i)
            .ok()
            .flatten()
            .map(str::to_string)
            .ok_or_else(|| CdcError::Protocol(format!("captured column without field {i}")))
    };
    let int = |i: usize| row.try_get::<i32, _>(i).ok().flatten().unwrap_or_default();
    let base = text(1)?;
    let type_name = match base.as_str() {
        "decimal" | "numeric" => format!("{base}({},{})", int(2), int(3)),
        _ => base,
    };
    Ok(CapturedColumn {
        name: text(0)?,
        type_name,
        key: int(4) == 1,
    })
}

/// Splits a change row into its position (the `__$` columns) and its captured columns.
pub fn change_row(row: tiberius::Row) -> Result<ChangeRow<Columns>, CdcError> {
    let names: Vec<String> = row.columns().iter().map(|c| c.name().to_string()).collect();
    let find = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| CdcError::Protocol(format!("change row without {name}")))
    };
    let commit_lsn = lsn_of(&row, find("__$start_lsn")?, "__$start_lsn")?;
    let seqval = lsn_of(&row, find("__$seqval")?, "__$seqval")?;
    let code = row
        .try_get::<i32, _>(find("__$operation")?)
        .map_err(|e| CdcError::Protocol(format!("__$operation: {e}")))?
        .unwrap_or_default();
    let operation = Operation::from_code(code)
        .ok_or_else(|| CdcError::Protocol(format!("unknown __$operation {code}")))?;
    let columns = names
        .into_iter()
        .zip(row)
        .filter(|(name, _)| !name.starts_with("__$"))
        .collect();
    Ok(ChangeRow {
        position: Position {
            commit_lsn,
            seqval,
            operation,
        },
        row: columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_queries_quote_their_identifiers() {
        let q = sql::snapshot("dbo.odd]name", &["a".into(), "b c".into()]);
        assert!(
            q.ends_with("SELECT [a], [b c] FROM [dbo].[odd]]name]"),
            "{q}"
        );
    }

    #[test]
    fn instance_names_are_identifiers() {
        assert!(checked_instance("dbo_claims").is_ok());
        for bad in ["", "x; DROP TABLE t", "a-b", "a b"] {
            assert!(checked_instance(bad).is_err(), "{bad}");
        }
    }
}
