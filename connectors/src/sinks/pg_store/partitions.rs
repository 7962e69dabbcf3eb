//! The warm store's monthly partitions: created ahead of the rows that need them, and
//! detached once they have aged into the cold tier.

use apache_avro::types::Value;
use chrono::{Datelike, NaiveDate};
use strata_pipeline::processors::change::{column, Row};
use strata_pipeline::runtime::SinkError;

use super::{transient, PgStore, WriteError};

impl PgStore {
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

    /// Creates the month's partition of the row (and `partitions_ahead` after it).
    pub(super) async fn ensure_partition(
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
