//! The stores of a quickstart-shaped topology read back for a quick comparison with the
//! source: each claim's status in the hot and warm PostgreSQL stores, and the claims in
//! the cold archive. The fault suite's full comparison is `super::oracle`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sqlx::{Connection, PgConnection};

/// claim_id → status of every claim row in `schema.claims`; none while the table does
/// not exist yet (its sink has not started). Any other failing query fails the test: it
/// is never an empty store.
pub async fn claims(url: &str, schema: &str) -> BTreeMap<i64, String> {
    let mut c = PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let rows = sqlx::query_as::<_, (i64, Option<String>)>(&format!(
        "SELECT claim_id, status FROM {schema}.claims"
    ))
    .fetch_all(&mut c)
    .await;
    match rows {
        Err(e) if super::oracle::undefined_table(&e) => BTreeMap::new(),
        Err(e) => panic!("reading {schema}.claims: {e}"),
        Ok(rows) => rows
            .into_iter()
            .map(|(id, s)| (id, s.unwrap_or_default()))
            .collect(),
    }
}

/// Claim ids whose latest archived change is not a delete, read through the manifests.
pub async fn archived_claims(root: &Path) -> BTreeSet<i64> {
    super::oracle::read_cold(root).await.claims()
}

/// Where the stores disagree with the source, or `None` when they match.
pub async fn mismatch(url: &str, archive: &Path) -> Option<String> {
    let source = claims(url, "public").await;
    let hot = claims(url, "hot").await;
    let warm = claims(url, "warm").await;
    let cold = archived_claims(archive).await;
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
