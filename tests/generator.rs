//! `strata generate` against the real PostgreSQL: migrations, determinism, labels, and
//! clear errors before anything is written.

mod support;

use chrono::NaiveDate;
use sqlx::{Executor, PgConnection};
use strata_connectors::generator::{self, GenerateError, GeneratorConfig, Start};
use support::fresh_db;

fn config() -> GeneratorConfig {
    GeneratorConfig {
        members: 300,
        providers: 40,
        claims: 3_000,
        stream_claims: 50,
        rate: None,
        anomaly_share: 0.05,
        seed: 99,
        years: 3,
        today: NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(),
    }
}

async fn fingerprint(conn: &mut PgConnection) -> Vec<String> {
    let mut out = Vec::new();
    for (table, order) in [
        ("public.members", "member_id"),
        ("public.providers", "provider_id"),
        ("public.policies", "policy_id"),
        ("public.claims", "claim_id"),
        ("public.claim_lines", "claim_id, line_number"),
        ("generator.anomaly_labels", "claim_id"),
    ] {
        let sql = format!(
            "SELECT count(*)::text || ':' || md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), '')) FROM (SELECT * FROM {table}) t"
        );
        // created_at/updated_at differ between runs; compare the rest.
        let sql = sql.replace(
            "SELECT * FROM",
            &format!(
                "SELECT {} FROM",
                columns_without_timestamps(conn, table).await
            ),
        );
        out.push(
            sqlx::query_scalar(&sql)
                .fetch_one(&mut *conn)
                .await
                .unwrap(),
        );
    }
    out
}

async fn columns_without_timestamps(conn: &mut PgConnection, table: &str) -> String {
    let (schema, name) = table.split_once('.').unwrap();
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 \
         AND column_name NOT IN ('created_at', 'updated_at') ORDER BY ordinal_position",
    )
    .bind(schema)
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    cols.join(", ")
}

#[tokio::test]
async fn same_seed_same_rows_and_labels_match() {
    let (_, mut a) = fresh_db("det_a").await;
    let (_, mut b) = fresh_db("det_b").await;
    let report = generator::generate(&mut a, &config(), Start::Fresh)
        .await
        .expect("generated");
    generator::generate(&mut b, &config(), Start::Fresh)
        .await
        .expect("generated");
    assert_eq!(fingerprint(&mut a).await, fingerprint(&mut b).await);
    assert!(report.updates > 0 && report.labels > 0, "{report:?}");
    println!(
        "bulk load: {:.0} rows/s ({} rows)",
        report.bulk_rows_per_second(),
        report.bulk_rows
    );

    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM generator.anomaly_labels l LEFT JOIN public.claims c USING (claim_id) WHERE c.claim_id IS NULL AND l.anomaly <> 'exact_duplicate'",
    )
    .fetch_one(&mut a)
    .await
    .unwrap();
    // Labelled claims may be voided and deleted by the lifecycle; backfill ones never are.
    let backfill_orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM generator.anomaly_labels l LEFT JOIN public.claims c USING (claim_id) WHERE c.claim_id IS NULL AND l.claim_id <= 3000",
    )
    .fetch_one(&mut a)
    .await
    .unwrap();
    assert_eq!(
        backfill_orphans, 0,
        "every backfill label points at its claim ({orphans} streamed ones deleted)"
    );
    let dup_ok: bool = sqlx::query_scalar(
        "SELECT bool_and(c.member_id = o.member_id AND c.provider_id = o.provider_id AND c.billed_amount = o.billed_amount AND c.service_date_from = o.service_date_from)
         FROM generator.anomaly_labels l JOIN public.claims c USING (claim_id) JOIN public.claims o ON o.claim_id = l.related_claim_id
         WHERE l.anomaly = 'exact_duplicate' AND l.claim_id <= 3000",
    )
    .fetch_one(&mut a)
    .await
    .unwrap();
    assert!(dup_ok);
}

#[tokio::test]
async fn migrations_are_idempotent_and_refill_needs_reset() {
    let (_, mut conn) = fresh_db("idem").await;
    generator::migrate(&mut conn).await.expect("first run");
    generator::migrate(&mut conn)
        .await
        .expect("second run is harmless");
    let small = GeneratorConfig {
        claims: 200,
        stream_claims: 0,
        ..config()
    };
    generator::generate(&mut conn, &small, Start::Fresh)
        .await
        .unwrap();
    let again = generator::generate(&mut conn, &small, Start::Fresh)
        .await
        .unwrap_err();
    assert!(matches!(again, GenerateError::NotEmpty(_)), "{again}");
    generator::generate(&mut conn, &small, Start::Reset)
        .await
        .expect("--reset empties first");
}

#[tokio::test]
async fn half_migrated_schema_is_reported_before_writing() {
    let (_, mut conn) = fresh_db("half").await;
    conn.execute("CREATE TABLE public.members (member_id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let err = generator::generate(&mut conn, &config(), Start::Fresh)
        .await
        .unwrap_err();
    match &err {
        GenerateError::HalfMigrated(missing) => {
            assert!(
                missing.iter().any(|m| m == "column public.members.ssn"),
                "{missing:?}"
            );
        }
        other => panic!("expected a half-migrated error, got {other}"),
    }
    let claims: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'claims'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(claims, 0, "nothing created or written");
}

#[tokio::test]
async fn bad_options_and_unreachable_database_are_clear() {
    let (_, mut conn) = fresh_db("opts").await;
    let err = generator::generate(
        &mut conn,
        &GeneratorConfig {
            rate: Some(0.0),
            ..config()
        },
        Start::Fresh,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("--rate"), "{err}");
    let err = generator::generate(
        &mut conn,
        &GeneratorConfig {
            anomaly_share: 2.0,
            ..config()
        },
        Start::Fresh,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("--anomaly-share"), "{err}");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'claims'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 0, "refused before migrating");

    let options: sqlx::postgres::PgConnectOptions =
        "postgres://postgres@127.0.0.1:9/claims".parse().unwrap();
    let err = generator::connect(&options).await.unwrap_err();
    assert!(err.to_string().contains("services.sh"), "{err}");
}
