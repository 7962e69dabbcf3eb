//! The PostgreSQL source checks its prerequisites first and names every problem with
//! its fix; it creates or completes its publication.

mod support;

use sqlx::Executor;
use strata_connectors::postgres::prerequisites::{check, ensure_publication, PrerequisiteError};

#[tokio::test]
async fn every_problem_is_named_with_its_fix() {
    let (_, mut conn) = support::fresh_db("prereq").await;
    conn.execute(
        "CREATE TABLE good (id bigint PRIMARY KEY, note text, amount numeric(12,2), tags text[]);
         CREATE TABLE no_pk (id bigint, note text);
         CREATE TABLE nothing (id bigint PRIMARY KEY); ALTER TABLE nothing REPLICA IDENTITY NOTHING;
         CREATE TABLE odd (id bigint PRIMARY KEY, v tsvector);",
    )
    .await
    .unwrap();
    let tables: Vec<String> = [
        "public.good",
        "public.no_pk",
        "public.nothing",
        "public.odd",
        "public.missing",
    ]
    .map(String::from)
    .to_vec();
    let err = check(&mut conn, &tables, "prereq_slot", false)
        .await
        .unwrap_err();
    let PrerequisiteError::Unmet(problems) = &err else {
        panic!("{err}")
    };
    let about = |t: &str| {
        problems
            .iter()
            .filter(|p| p.table.as_deref() == Some(t))
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(about("public.no_pk").contains("ADD PRIMARY KEY"), "{err}");
    assert!(
        about("public.nothing").contains("REPLICA IDENTITY DEFAULT"),
        "{err}"
    );
    assert!(about("public.odd").contains("tsvector"), "{err}");
    assert!(about("public.missing").contains("does not exist"), "{err}");
    assert!(about("public.good").is_empty(), "{err}");

    let infos = check(
        &mut conn,
        &["public.good".to_string()],
        "prereq_slot",
        false,
    )
    .await
    .expect("the good table passes");
    assert_eq!(infos[0].primary_key, vec!["id"]);
    assert_eq!(infos[0].columns.len(), 4);
    assert!(infos[0].columns[1].nullable && !infos[0].columns[0].nullable);
}

#[tokio::test]
async fn publication_is_created_and_completed() {
    let (_, mut conn) = support::fresh_db("publication").await;
    conn.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);")
        .await
        .unwrap();
    ensure_publication(&mut conn, "strata_pub", &["public.a".to_string()])
        .await
        .unwrap();
    ensure_publication(
        &mut conn,
        "strata_pub",
        &["public.a".to_string(), "public.b".to_string()],
    )
    .await
    .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'strata_pub' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, vec!["a", "b"]);
}
