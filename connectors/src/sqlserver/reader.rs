//! [`CdcReader`] over TDS: the CDC catalog and change functions queried through tiberius.
//!
//! Queries (parameters bound, never interpolated — except the capture instance's name in
//! `cdc.fn_cdc_get_all_changes_<instance>`, which is checked to be an identifier first):
//! - `sys.databases.is_cdc_enabled` before anything else (CDC disabled has its own error);
//! - `cdc.change_tables` for capture instances and their start LSNs;
//! - `sys.fn_cdc_get_max_lsn()`, `sys.fn_cdc_get_min_lsn(@P1)`;
//! - `cdc.fn_cdc_get_all_changes_<instance>(@P1, @P2, N'all update old')`.
//!
//! Each statement starts with a tag comment (`/* STRATA CDC_MAX_LSN */`): it names the
//! query in SQL Server's own views (Query Store, `sys.dm_exec_requests`) for the DBA of
//! a legacy server, and it is what the TDS stand-in of tests/sqlserver_wire matches.
//! Identifiers stay lower-case, as case-sensitive collations need.
//!
//! Server errors are split: permission denied (229, 230, 297, 916) and missing objects
//! (208: a dropped capture instance) are definite, with their own messages; I/O and the
//! rest are transient and retried by the source.

use futures::future::BoxFuture;
use futures::AsyncRead;
use futures::AsyncWrite;
use tiberius::{Client, ColumnData};

use super::lsn::{Lsn, Operation, Position};
use super::stream::{CaptureInstance, CdcError, CdcReader, ChangeRow};

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
}

/// A change row's captured columns, by name, as tiberius decoded them.
pub type Columns = Vec<(String, ColumnData<'static>)>;

pub struct TdsReader<S: AsyncRead + AsyncWrite + Unpin + Send> {
    client: Client<S>,
    database: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> TdsReader<S> {
    pub fn new(client: Client<S>, database: &str) -> Self {
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
}

/// Definite or transient, by what the server said.
pub fn classify(e: tiberius::error::Error) -> CdcError {
    match &e {
        tiberius::error::Error::Server(token) => match token.code() {
            229 | 230 | 297 | 916 => CdcError::Permission(token.message().to_string()),
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

impl<S: AsyncRead + AsyncWrite + Unpin + Send> CdcReader for TdsReader<S> {
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
    fn instance_names_are_identifiers() {
        assert!(checked_instance("dbo_claims").is_ok());
        for bad in ["", "x; DROP TABLE t", "a-b", "a b"] {
            assert!(checked_instance(bad).is_err(), "{bad}");
        }
    }
}
