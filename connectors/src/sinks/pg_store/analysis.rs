//! Claim analyses in a store: one row per claim, guarded by the analysis id (later
//! revisions sort later).

use apache_avro::types::Value;
use strata_pipeline::runtime::processor::record_field;

use super::{PgStore, WriteError};

impl PgStore {
    pub(super) async fn write_analysis(
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
}
