//! Checks that PostgreSQL can feed the source before anything is created or read, and
//! says exactly what is wrong and how to fix it: `wal_level`, a free replication slot,
//! the REPLICATION privilege, and for each table its existence, primary key, replica
//! identity, SELECT privilege and column types. Also creates the publication when missing.

use std::fmt;

use sqlx::postgres::PgConnection;
use strata_pipeline::avro::types::{Column, ColumnType};

/// One unmet prerequisite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The table concerned, if any.
    pub table: Option<String>,
    pub what: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.table {
            Some(t) => write!(f, "{t}: {} — fix: {}", self.what, self.fix),
            None => write!(f, "{} — fix: {}", self.what, self.fix),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrerequisiteError {
    #[error("PostgreSQL is not ready for change capture:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Unmet(Vec<Problem>),
    #[error("checking the prerequisites failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// A captured table as the source needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
}

impl TableInfo {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

fn problem(table: Option<&str>, what: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        table: table.map(str::to_string),
        what: what.into(),
        fix: fix.into(),
    }
}

/// Checks everything and returns the tables' columns and keys, or every problem found.
///
/// `resuming` (the slot exists): a table that no longer exists was dropped while the
/// source ran or was down; it has no more changes to lose, so it is skipped with a warning
/// and the other tables keep streaming. On a first start a missing table is an error (most
/// likely a typo in the topology).
pub async fn check(
    conn: &mut PgConnection,
    tables: &[String],
    slot: &str,
    resuming: bool,
) -> Result<Vec<TableInfo>, PrerequisiteError> {
    let mut problems = Vec::new();
    let wal_level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&mut *conn)
        .await?;
    if wal_level != "logical" {
        problems.push(problem(
            None,
            format!("wal_level is `{wal_level}`"),
            "set wal_level = logical in postgresql.conf and restart PostgreSQL",
        ));
    }
    let (max_slots, used, ours): (i64, i64, bool) = sqlx::query_as(
        "SELECT current_setting('max_replication_slots')::bigint, count(*), coalesce(bool_or(slot_name = $1), false) FROM pg_replication_slots",
    )
    .bind(slot)
    .fetch_one(&mut *conn)
    .await?;
    if !ours && used >= max_slots {
        problems.push(problem(None, format!("all {max_slots} replication slots are in use"), "raise max_replication_slots (restart needed) or drop an unused slot with pg_drop_replication_slot()"));
    }
    let (can_replicate, user): (bool, String) = sqlx::query_as("SELECT rolreplication OR rolsuper, current_user::text FROM pg_roles WHERE rolname = current_user")
        .fetch_one(&mut *conn)
        .await?;
    if !can_replicate {
        problems.push(problem(
            None,
            format!("role `{user}` may not open replication connections"),
            format!("ALTER ROLE {user} WITH REPLICATION"),
        ));
    }

    let mut infos = Vec::new();
    for table in tables {
        let t = Some(table.as_str());
        let Some((schema, name)) = table.split_once('.') else {
            problems.push(problem(
                t,
                "not written as schema.table",
                "write e.g. public.claims",
            ));
            continue;
        };
        let row: Option<(String, bool, bool)> = sqlx::query_as(
            "SELECT c.relreplident::text, has_table_privilege(c.oid, 'SELECT'),
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
        )
        .bind(schema)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((identity, can_select, has_pk)) = row else {
            if resuming && tables.len() > 1 {
                tracing::warn!(table = %format!("{schema}.{name}"), "a captured table no longer exists (dropped); streaming the others. Remove it from the source's `tables`");
                continue;
            }
            problems.push(problem(
                t,
                "the table does not exist",
                "create it, or remove it from the source's `tables`",
            ));
            continue;
        };
        if !has_pk {
            problems.push(problem(
                t,
                "no primary key: events are keyed and ordered by primary key",
                format!("ALTER TABLE {table} ADD PRIMARY KEY (…)"),
            ));
        }
        match identity.as_str() {
            "n" => problems.push(problem(
                t,
                "REPLICA IDENTITY NOTHING: updates and deletes carry no key",
                format!("ALTER TABLE {table} REPLICA IDENTITY DEFAULT"),
            )),
            "d" if !has_pk => problems.push(problem(
                t,
                "REPLICA IDENTITY DEFAULT without a primary key: updates and deletes carry no key",
                format!("add a primary key, or ALTER TABLE {table} REPLICA IDENTITY FULL"),
            )),
            _ => {}
        }
        if !can_select {
            problems.push(problem(
                t,
                format!("role `{user}` may not SELECT it (needed for the snapshot)"),
                format!("GRANT SELECT ON {table} TO {user}"),
            ));
        }
        let columns: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let mut mapped = Vec::new();
        for (column, type_name, nullable) in columns {
            match ColumnType::from_postgres(&type_name) {
                Ok(ty) => mapped.push(Column {
                    name: column,
                    ty,
                    nullable,
                }),
                Err(e) => problems.push(problem(
                    t,
                    format!("column `{column}`: {e}"),
                    "cast it in a view, or leave the table out",
                )),
            }
        }
        let primary_key: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        infos.push(TableInfo {
            schema: schema.into(),
            name: name.into(),
            columns: mapped,
            primary_key,
        });
    }
    if problems.is_empty() {
        Ok(infos)
    } else {
        Err(PrerequisiteError::Unmet(problems))
    }
}

/// Creates `publication` for `tables` when missing, and adds tables it lacks.
pub async fn ensure_publication(
    conn: &mut PgConnection,
    publication: &str,
    tables: &[String],
) -> Result<(), sqlx::Error> {
    let quoted = |t: &String| {
        t.split('.')
            .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(".")
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(publication)
            .fetch_one(&mut *conn)
            .await?;
    let name = format!("\"{}\"", publication.replace('"', "\"\""));
    if !exists {
        let list = tables.iter().map(quoted).collect::<Vec<_>>().join(", ");
        sqlx::query(&format!("CREATE PUBLICATION {name} FOR TABLE {list}"))
            .execute(&mut *conn)
            .await?;
        tracing::info!(%publication, "created publication");
        return Ok(());
    }
    let present: Vec<String> = sqlx::query_scalar(
        "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
    )
    .bind(publication)
    .fetch_all(&mut *conn)
    .await?;
    for table in tables.iter().filter(|t| !present.contains(t)) {
        sqlx::query(&format!(
            "ALTER PUBLICATION {name} ADD TABLE {}",
            quoted(table)
        ))
        .execute(&mut *conn)
        .await?;
        tracing::info!(%publication, %table, "added table to publication");
    }
    Ok(())
}
