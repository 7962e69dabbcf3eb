//! The stores of a quickstart-shaped topology read back for comparison with the source:
//! claims in the hot and warm PostgreSQL stores and in the cold archive.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use apache_avro::types::Value;
use sqlx::{Connection, PgConnection};
use strata_pipeline::runtime::processor::record_field;

/// claim_id → status of every claim row in `schema.claims`.
pub async fn claims(url: &str, schema: &str) -> BTreeMap<i64, String> {
    let mut c = PgConnection::connect(url).await.expect("connect");
    sqlx::query_as::<_, (i64, Option<String>)>(&format!(
        "SELECT claim_id, status FROM {schema}.claims"
    ))
    .fetch_all(&mut c)
    .await
    .unwrap_or_default()
    .into_iter()
    .map(|(id, s)| (id, s.unwrap_or_default()))
    .collect()
}

/// Claim ids whose latest archived change is not a delete.
pub fn archived_claims(root: &Path) -> BTreeSet<i64> {
    let mut latest: BTreeMap<i64, (String, bool)> = BTreeMap::new();
    let Ok(days) = std::fs::read_dir(root) else {
        return BTreeSet::new();
    };
    for day in days.flatten().filter(|d| d.path().is_dir()) {
        for file in std::fs::read_dir(day.path()).unwrap().flatten() {
            if file.path().extension().is_none_or(|e| e != "avro") {
                continue;
            }
            let bytes = std::fs::read(file.path()).unwrap();
            let Ok(reader) = apache_avro::Reader::new(&bytes[..]) else {
                continue;
            };
            for value in reader.flatten() {
                let Some(source) = record_field(&value, "source") else {
                    continue;
                };
                if record_field(source, "table") != Some(&Value::String("claims".into())) {
                    continue;
                }
                let position = match record_field(source, "position") {
                    Some(Value::String(p)) => p.clone(),
                    _ => continue,
                };
                let deleted = record_field(&value, "op") == Some(&Value::String("d".into()));
                let row = record_field(&value, "after").or_else(|| record_field(&value, "before"));
                let Some(Value::Long(id)) = row.and_then(|r| record_field(r, "claim_id")) else {
                    continue;
                };
                let e = latest.entry(*id).or_insert((position.clone(), deleted));
                if position >= e.0 {
                    *e = (position, deleted);
                }
            }
        }
    }
    latest
        .into_iter()
        .filter(|(_, (_, deleted))| !deleted)
        .map(|(id, _)| id)
        .collect()
}

/// Where the stores disagree with the source, or `None` when they match.
pub async fn mismatch(url: &str, archive: &Path) -> Option<String> {
    let source = claims(url, "public").await;
    let hot = claims(url, "hot").await;
    let warm = claims(url, "warm").await;
    let cold = archived_claims(archive);
    if let Some(id) = hot.keys().find(|id| warm.contains_key(id)) {
        return Some(format!("claim {id} is both hot and warm"));
    }
    for (tier, rows) in [("hot", &hot), ("warm", &warm)] {
        for (id, status) in rows {
            match source.get(id) {
                None => return Some(format!("{tier} has claim {id}, which the source deleted")),
                Some(s) if s != status => {
                    return Some(format!(
                        "{tier} claim {id} is {status}, the source says {s}"
                    ))
                }
                _ => {}
            }
        }
    }
    let stored: BTreeSet<i64> = hot.keys().chain(warm.keys()).copied().collect();
    let missing: Vec<_> = source
        .keys()
        .filter(|id| !stored.contains(id) && !cold.contains(id))
        .take(5)
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "{} of {} source claims in no store yet (e.g. {missing:?}); hot {}, warm {}, cold {}",
            source
                .keys()
                .filter(|id| !stored.contains(id) && !cold.contains(id))
                .count(),
            source.len(),
            hot.len(),
            warm.len(),
            cold.len()
        ));
    }
    None
}
