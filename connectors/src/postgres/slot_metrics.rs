//! Exports how far a replication slot trails the server, while the source streams.
//!
//! - `strata_replication_lag_bytes`: WAL written since the slot's confirmed flush
//!   position (what Strata has yet to get acknowledged by Kafka and confirm);
//! - `strata_slot_retained_wal_bytes`: WAL the server keeps for the slot (from its
//!   restart position) — what fills the disk when a slot stops advancing.
//!
//! Read from `pg_replication_slots` over an ordinary connection every interval; a failed
//! reading is logged and tried again on the next tick.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use strata_pipeline::ops::metrics::Metrics;

pub struct SlotMetrics(tokio::task::JoinHandle<()>);

impl SlotMetrics {
    pub fn start(
        options: PgConnectOptions,
        slot: String,
        component: String,
        metrics: Metrics,
        every: Duration,
    ) -> Self {
        let lag = metrics
            .replication_lag_bytes
            .with_label_values(&[&component, &slot]);
        let retained = metrics
            .slot_retained_wal_bytes
            .with_label_values(&[&component, &slot]);
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
                let reading: Result<Option<(Option<i64>, Option<i64>)>, _> = sqlx::query_as(
                    "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint,
                            (pg_current_wal_lsn() - restart_lsn)::bigint
                     FROM pg_replication_slots WHERE slot_name = $1",
                )
                .bind(&slot)
                .fetch_optional(&mut *c)
                .await;
                match reading {
                    Ok(Some((l, r))) => {
                        lag.set(l.unwrap_or(0).max(0));
                        retained.set(r.unwrap_or(0).max(0));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, %slot, "cannot read the slot's lag; retrying on the next interval");
                        conn = None;
                    }
                }
            }
        }))
    }
}

impl Drop for SlotMetrics {
    fn drop(&mut self) {
        self.0.abort();
    }
}
