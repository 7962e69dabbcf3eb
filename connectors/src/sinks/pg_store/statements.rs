//! The statements that write change rows: position-guarded upserts (one row, or many
//! in one statement) and deletes.

use std::collections::HashMap;

use sqlx::Row as _;
use strata_pipeline::processors::change::{column, Change, Row};

use super::schema::quote;
use super::values::to_text;
use super::{Table, WriteError};

/// The key columns, quoted, for `ON CONFLICT (…)`.
fn key_list(table: &Table) -> String {
    table
        .key
        .iter()
        .map(|k| quote(k))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn key_clause(table: &Table, first: usize) -> String {
    table
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let ty = table.column_type(k);
            format!("{} = ${}::{ty}", quote(k), first + i)
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

pub(super) async fn delete_key(
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

/// Writes `change`'s row. Columns it marks unavailable (an unchanged TOAST value the
/// source did not send, and no stage could fill) keep their stored value: they are left
/// out of the update, and carried over when the row moves partition.
pub(super) async fn upsert(
    conn: &mut sqlx::PgConnection,
    qualified: &str,
    table: &Table,
    change: &Change<'_>,
) -> Result<(), WriteError> {
    let (row, position) = (change.after.unwrap_or_default(), change.position);
    let kept = |c: &str| change.unavailable.contains(&c);
    let mut stored: HashMap<String, Option<String>> = HashMap::new();
    if table.partition_by.is_some() && !change.unavailable.is_empty() {
        stored = stored_values(conn, qualified, table, row, &change.unavailable).await?;
    }
    let cols: Vec<&str> = table.columns.iter().map(|(c, _)| c.as_str()).collect();
    let quoted: Vec<String> = cols.iter().map(|c| quote(c)).collect();
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
            cols = quoted.join(", "),
            params = params.join(", "),
            key = key_clause(table, pos_param + 1),
        )
    } else {
        let updates: Vec<String> = cols
            .iter()
            .filter(|c| !kept(c))
            .map(|c| format!("{q} = excluded.{q}", q = quote(c)))
            .chain([
                "_position = excluded._position".into(),
                "_written_at = now()".into(),
            ])
            .collect();
        format!(
            "INSERT INTO {qualified} AS t ({cols}, _position) VALUES ({params}, ${pos_param})
             ON CONFLICT ({key}) DO UPDATE SET {updates}
             WHERE t._position < excluded._position",
            cols = quoted.join(", "),
            params = params.join(", "),
            key = key_list(table),
            updates = updates.join(", "),
        )
    };
    let mut query = sqlx::query(&sql);
    for (c, ty) in &table.columns {
        query = match stored.get(c) {
            Some(value) => query.bind(value.clone()),
            None => query.bind(column(row, c).and_then(|v| to_text(v, ty))),
        };
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

/// The stored values (as text) of `columns` of `row`'s key, before a partitioned table
/// deletes and re-inserts it; none for a key not stored yet.
pub(super) async fn stored_values(
    conn: &mut sqlx::PgConnection,
    qualified: &str,
    table: &Table,
    row: &Row,
    columns: &[&str],
) -> Result<HashMap<String, Option<String>>, WriteError> {
    let known: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| table.columns.iter().any(|(name, _)| name == c))
        .collect();
    if known.is_empty() {
        return Ok(HashMap::new());
    }
    let select: Vec<String> = known
        .iter()
        .map(|c| format!("{}::text", quote(c)))
        .collect();
    let sql = format!(
        "SELECT {} FROM {qualified} WHERE {} ORDER BY _position DESC LIMIT 1",
        select.join(", "),
        key_clause(table, 1)
    );
    let mut query = sqlx::query(&sql);
    for k in &table.key {
        query = query.bind(column(row, k).and_then(|v| to_text(v, table.column_type(k))));
    }
    let Some(found) = query.fetch_optional(&mut *conn).await? else {
        return Ok(HashMap::new());
    };
    let mut out = HashMap::new();
    for (i, c) in known.iter().enumerate() {
        out.insert(c.to_string(), found.try_get::<Option<String>, _>(i)?);
    }
    Ok(out)
}

/// Upserts many rows of one table in one statement: each column as a text array,
/// unnested and cast. One statement may not touch a row twice, so only the newest
/// version of each key is sent; the position guard is the same as [`upsert`]'s.
pub(super) async fn upsert_many(
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
    let quoted: Vec<String> = cols.iter().map(|c| quote(c)).collect();
    let casts: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("u.c{i}::{ty}"))
        .collect();
    let arrays: Vec<String> = (1..=n + 1).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let updates: Vec<String> = quoted
        .iter()
        .map(|q| format!("{q} = excluded.{q}"))
        .collect();
    let sql = format!(
        "INSERT INTO {qualified} AS t ({cols}, _position)
         SELECT {casts}, u.pos FROM UNNEST({arrays}) AS u({names}, pos)
         ON CONFLICT ({key}) DO UPDATE SET {updates}, _position = excluded._position, _written_at = now()
         WHERE t._position < excluded._position",
        cols = quoted.join(", "),
        casts = casts.join(", "),
        arrays = arrays.join(", "),
        names = names.join(", "),
        key = key_list(table),
        updates = updates.join(", "),
    );
    let mut query = sqlx::query(&sql);
    for values in columns {
        query = query.bind(values);
    }
    query.bind(positions).execute(&mut *conn).await?;
    Ok(())
}
