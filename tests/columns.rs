//! Every column arrives: the quickstart topology (`strata run`) over a generated claims
//! database while its table changes shape, against the real PostgreSQL, broker and
//! registry.
//!
//! A `text` and a `jsonb` column are added to `public.claims` while it streams; large
//! values (TOASTed) set on a hot and a warm claim reach both stores, also after updates
//! of other columns only (the source then marks them unavailable, and the stores keep
//! them), with the default replica identity and with `REPLICA IDENTITY FULL`. A column
//! dropped upstream stays in the stores, NULL from then on. A type change the registry's
//! BACKWARD rule refuses stops the deployment with a message naming the column.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::{Connection, PgConnection};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// (status, note length, extra's length as text) of claim `id` in `schema`, once the
/// columns exist there.
async fn row(url: &str, schema: &str, id: i64) -> Option<(String, Option<i32>, Option<i32>)> {
    let mut c = PgConnection::connect(url).await.ok()?;
    let sql = format!(
        "SELECT status, length(note), length(extra::text) FROM {schema}.claims WHERE claim_id = $1"
    );
    sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(&mut c)
        .await
        .ok()?
}

async fn wait_row(
    url: &str,
    schema: &str,
    id: i64,
    want: (&str, Option<i32>, Option<i32>),
    what: &str,
    log: &std::path::Path,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got = row(url, schema, id).await;
        if got
            .as_ref()
            .is_some_and(|(s, n, e)| (s.as_str(), *n, *e) == want)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {schema}.claims {id} is {got:?}, expected {want:?}\n{}",
            tail(log)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn run(db: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(30).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_columns_and_unchanged_toast_values_reach_every_store() {
    let (url, mut db) = support::fresh_db("columns").await;
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(&dir.path().join("registry")).await;
    support::generate(&url, 60, 20, 300, 5);
    let region = format!("cols{}", std::process::id());
    let slot = format!("strata_{region}");
    let log = dir.path().join("strata.log");
    let mut child: Child = Command::new(STRATA)
        .args(["run", "topologies/quickstart.yaml"])
        .args(["--listen", &format!("127.0.0.1:{}", support::free_port())])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("STRATA_PG_URL", &url)
        .env("STRATA_REGION", &region)
        .env("STRATA_SLOT", &slot)
        .env("STRATA_HOME", dir.path())
        .env("STRATA_SCHEMA_REGISTRY_URL", &registry.url)
        .env("STRATA_KAFKA_BROKERS", support::kafka_brokers())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("strata starts");
    let archive = dir.path().join("archive").join(&region);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while let Some(last) = support::stores::mismatch(&url, &archive).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the snapshot never reached the stores: {last}\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pick = |schema: &'static str| {
        let url = url.clone();
        async move {
            let mut c = PgConnection::connect(&url).await.unwrap();
            let id: i64 = sqlx::query_scalar(&format!("SELECT min(claim_id) FROM {schema}.claims"))
                .fetch_one(&mut c)
                .await
                .unwrap();
            id
        }
    };
    let (hot, warm) = (pick("hot").await, pick("warm").await);

    // Two columns added while streaming; large values, stored out of line (TOAST).
    run(
        &mut db,
        "ALTER TABLE public.claims ADD COLUMN note text, ADD COLUMN extra jsonb",
    )
    .await;
    run(&mut db, &format!(
        "UPDATE public.claims SET note = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 600) g),
         extra = jsonb_build_object('history', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 700) g))
         WHERE claim_id IN ({hot}, {warm})"
    )).await;
    let (note, extra): (i32, i32) = sqlx::query_as(
        "SELECT length(note), length(extra::text) FROM public.claims WHERE claim_id = $1",
    )
    .bind(hot)
    .fetch_one(&mut db)
    .await
    .unwrap();
    for (schema, id) in [("hot", hot), ("warm", warm)] {
        let s: String = sqlx::query_scalar("SELECT status FROM public.claims WHERE claim_id = $1")
            .bind(id)
            .fetch_one(&mut db)
            .await
            .unwrap();
        wait_row(
            &url,
            schema,
            id,
            (&s, Some(note), Some(extra)),
            "the added columns",
            &log,
        )
        .await;
    }

    // Another column changes; the large values are not sent again (unavailable).
    for (identity, status) in [("DEFAULT", "PAID"), ("FULL", "DENIED")] {
        run(
            &mut db,
            &format!("ALTER TABLE public.claims REPLICA IDENTITY {identity}"),
        )
        .await;
        run(&mut db, &format!(
            "UPDATE public.claims SET status = '{status}', updated_at = now() WHERE claim_id IN ({hot}, {warm})"
        )).await;
        for (schema, id) in [("hot", hot), ("warm", warm)] {
            let what = format!("a status update with replica identity {identity}");
            wait_row(
                &url,
                schema,
                id,
                (status, Some(note), Some(extra)),
                &what,
                &log,
            )
            .await;
        }
    }

    // A column dropped upstream stays in the store, NULL in rows written from then on.
    run(&mut db, "ALTER TABLE public.claims DROP COLUMN extra").await;
    run(
        &mut db,
        &format!(
        "UPDATE public.claims SET status = 'ADJUDICATED', updated_at = now() WHERE claim_id = {hot}"
    ),
    )
    .await;
    wait_row(
        &url,
        "hot",
        hot,
        ("ADJUDICATED", Some(note), None),
        "after a drop",
        &log,
    )
    .await;

    // text → integer: the registry refuses the new schema, and the deployment stops
    // saying which column.
    run(
        &mut db,
        "ALTER TABLE public.claims ALTER COLUMN note TYPE integer USING length(note)",
    )
    .await;
    run(
        &mut db,
        &format!("UPDATE public.claims SET status = 'PAID' WHERE claim_id = {hot}"),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an incompatible type change did not stop the deployment\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(
        text.contains("incompatible") && text.contains("note"),
        "the log names the refused change:\n{}",
        tail(&log)
    );
    let _ = child.kill();
    support::drop_slot_when_released(&mut db, &url, &slot).await;
    registry.shutdown().await;
}
