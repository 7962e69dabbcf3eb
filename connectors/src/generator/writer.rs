//! Writes a workload into PostgreSQL: migrations, checks, a COPY backfill, then
//! claims arriving at a rate with their lifecycle as single-row transactions.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rand::Rng;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

use super::config::{ConfigError, GeneratorConfig};
use super::model::{Claim, ClaimFactory, Label, Status};

/// The claims migration for PostgreSQL (idempotent).
pub const POSTGRES_MIGRATION: &str = include_str!("../../sql/claims/postgres/001_claims.sql");

/// Every table and column the generator writes, as the migration creates them.
pub const EXPECTED_COLUMNS: &[(&str, &[&str])] = &[
    (
        "public.members",
        &[
            "member_id",
            "first_name",
            "last_name",
            "date_of_birth",
            "ssn",
            "gender",
            "address_line",
            "city",
            "state",
            "postal_code",
        ],
    ),
    (
        "public.providers",
        &[
            "provider_id",
            "npi",
            "name",
            "provider_type",
            "specialty",
            "state",
        ],
    ),
    (
        "public.policies",
        &[
            "policy_id",
            "member_id",
            "plan_code",
            "coverage_start",
            "coverage_end",
            "status",
        ],
    ),
    (
        "public.claims",
        &[
            "claim_id",
            "member_id",
            "provider_id",
            "policy_id",
            "claim_type",
            "form_type",
            "status",
            "service_date_from",
            "service_date_to",
            "submitted_date",
            "billed_amount",
            "allowed_amount",
            "paid_amount",
            "diagnosis_codes",
            "place_of_service",
            "frequency_code",
            "original_claim_id",
        ],
    ),
    (
        "public.claim_lines",
        &[
            "claim_id",
            "line_number",
            "procedure_code",
            "modifiers",
            "units",
            "charge_amount",
            "service_date",
        ],
    ),
    (
        "generator.anomaly_labels",
        &["claim_id", "anomaly", "related_claim_id", "detail"],
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot connect to the source database: {0}; is it running? (scripts/services.sh start)"
    )]
    Connect(#[source] sqlx::Error),
    #[error("applying the claims migration failed: {0}")]
    Migrate(#[source] sqlx::Error),
    #[error("the claims schema is half-migrated; missing: {}. Drop the partial tables or fix them, then run again", .0.join(", "))]
    HalfMigrated(Vec<String>),
    #[error("--resume needs the backfill of the same options: found {found} claims, the options make {expected}; pass the --claims, --seed, --years and --today of the backfill")]
    CannotResume { found: i64, expected: u32 },
    #[error("the claims tables already hold {0} rows; run with --reset to empty them first (ids would collide)")]
    NotEmpty(i64),
    #[error("writing the workload failed: {0}")]
    Write(#[source] sqlx::Error),
}

/// What was written, and how fast.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    pub members: u64,
    pub providers: u64,
    pub policies: u64,
    pub claims: u64,
    pub lines: u64,
    pub labels: u64,
    pub updates: u64,
    pub deletes: u64,
    pub bulk_rows: u64,
    pub bulk_seconds: f64,
    pub stream_seconds: f64,
}

impl Report {
    pub fn bulk_rows_per_second(&self) -> f64 {
        if self.bulk_seconds > 0.0 {
            self.bulk_rows as f64 / self.bulk_seconds
        } else {
            0.0
        }
    }
}

/// Applies the migration and checks that every expected column exists. Tables that
/// exist but lack columns (a half-migrated schema) are reported before anything runs.
pub async fn migrate(conn: &mut PgConnection) -> Result<(), GenerateError> {
    missing_columns(conn, false).await?;
    conn.execute(POSTGRES_MIGRATION)
        .await
        .map_err(GenerateError::Migrate)?;
    check_schema(conn).await
}

/// Reports every missing table or column at once.
pub async fn check_schema(conn: &mut PgConnection) -> Result<(), GenerateError> {
    missing_columns(conn, true).await
}

/// Lists missing columns of the expected tables; missing tables count only if `tables_too`.
async fn missing_columns(conn: &mut PgConnection, tables_too: bool) -> Result<(), GenerateError> {
    let present: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema || '.' || table_name, column_name FROM information_schema.columns \
         WHERE table_schema IN ('public', 'generator')",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(GenerateError::Write)?;
    let mut missing = Vec::new();
    for (table, columns) in EXPECTED_COLUMNS {
        if !present.iter().any(|(t, _)| t == table) {
            if tables_too {
                missing.push(format!("table {table}"));
            }
            continue;
        }
        for column in *columns {
            if !present.iter().any(|(t, c)| t == table && c == column) {
                missing.push(format!("column {table}.{column}"));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(GenerateError::HalfMigrated(missing))
    }
}

fn cents(c: i64) -> String {
    format!("{}.{:02}", c / 100, (c % 100).abs())
}

fn opt_cents(c: Option<i64>) -> String {
    c.map(cents).unwrap_or_else(|| "\\N".into())
}

/// A text-format COPY array literal of simple codes (no quoting needed).
fn array(items: &[&str]) -> String {
    format!("{{{}}}", items.join(","))
}

fn date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn claim_row(out: &mut String, c: &Claim) {
    let _ = writeln!(
        out,
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        c.id,
        c.member_id,
        c.provider_id,
        c.policy_id,
        c.claim_type.as_str(),
        c.claim_type.form_type(),
        c.status.as_str(),
        date(c.service_date_from),
        date(c.service_date_to),
        date(c.submitted_date),
        cents(c.billed_cents),
        opt_cents(c.allowed_cents),
        opt_cents(c.paid_cents),
        array(&c.diagnosis_codes),
        c.place_of_service.unwrap_or("\\N"),
        c.frequency_code,
        c.original_claim_id
            .map(|i| i.to_string())
            .unwrap_or_else(|| "\\N".into()),
    );
}

fn line_rows(out: &mut String, c: &Claim) {
    for l in &c.lines {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            c.id,
            l.number,
            l.procedure_code,
            array(&l.modifiers),
            l.units,
            cents(l.charge_cents),
            date(l.service_date)
        );
    }
}

fn label_row(out: &mut String, l: &Label) {
    // Details are generated text without tabs, newlines or backslashes.
    let related = l
        .related_claim_id
        .map(|i| i.to_string())
        .unwrap_or_else(|| "\\N".into());
    let _ = writeln!(
        out,
        "{}\t{}\t{related}\t{}",
        l.claim_id,
        l.anomaly.as_str(),
        l.detail
    );
}

async fn copy(conn: &mut PgConnection, statement: &str, data: String) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(data.into_bytes()).await?;
    copy.finish().await
}

const COPY_CLAIMS: &str = "COPY public.claims (claim_id, member_id, provider_id, policy_id, claim_type, form_type, status, service_date_from, service_date_to, submitted_date, billed_amount, allowed_amount, paid_amount, diagnosis_codes, place_of_service, frequency_code, original_claim_id) FROM STDIN";
const COPY_LINES: &str = "COPY public.claim_lines (claim_id, line_number, procedure_code, modifiers, units, charge_amount, service_date) FROM STDIN";
const COPY_LABELS: &str =
    "COPY generator.anomaly_labels (claim_id, anomaly, related_claim_id, detail) FROM STDIN";

/// Claims per COPY batch: bounds the memory of the backfill.
const BATCH: usize = 5_000;

/// How `generate` treats what the database already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The tables must be empty.
    Fresh,
    /// Empty the tables first.
    Reset,
    /// The backfill of the same config is already there: rebuild the generator's state
    /// without writing, then stream (e.g. once a pipeline has snapshotted the backfill).
    Resume,
}

/// Writes the workload described by `config` into the database at `conn`.
pub async fn generate(
    conn: &mut PgConnection,
    config: &GeneratorConfig,
    start: Start,
) -> Result<Report, GenerateError> {
    config.check()?;
    migrate(conn).await?;
    if start == Start::Reset {
        conn.execute("TRUNCATE public.claim_lines, public.claims, public.policies, public.providers, public.members, generator.anomaly_labels")
            .await
            .map_err(GenerateError::Write)?;
    }
    let existing: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM public.members) + (SELECT count(*) FROM public.claims)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(GenerateError::Write)?;
    let mut factory = ClaimFactory::new(config);
    let mut report = Report::default();
    if start == Start::Resume {
        let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM public.claims")
            .fetch_one(&mut *conn)
            .await
            .map_err(GenerateError::Write)?;
        if claims != i64::from(config.claims) {
            return Err(GenerateError::CannotResume {
                found: claims,
                expected: config.claims,
            });
        }
        let (from, to) = factory.backfill_window(config.years);
        let mut replayed = 0u32;
        while replayed < config.claims {
            replayed += factory.next(from, to).len() as u32;
        }
        stream(conn, config, &mut factory, &mut report).await?;
        return Ok(report);
    }
    if existing > 0 {
        return Err(GenerateError::NotEmpty(existing));
    }

    let started = Instant::now();
    write_reference(conn, &factory, &mut report).await?;

    let (from, to) = factory.backfill_window(config.years);
    let mut written = 0u64;
    while written < u64::from(config.claims) {
        let (mut claims, mut lines, mut labels) = (String::new(), String::new(), String::new());
        let mut batch = 0;
        while batch < BATCH && written < u64::from(config.claims) {
            for (claim, label) in factory.next(from, to) {
                claim_row(&mut claims, &claim);
                line_rows(&mut lines, &claim);
                report.lines += claim.lines.len() as u64;
                if let Some(l) = label {
                    label_row(&mut labels, &l);
                    report.labels += 1;
                }
                written += 1;
                batch += 1;
            }
        }
        copy(conn, COPY_CLAIMS, claims)
            .await
            .map_err(GenerateError::Write)?;
        copy(conn, COPY_LINES, lines)
            .await
            .map_err(GenerateError::Write)?;
        if !labels.is_empty() {
            copy(conn, COPY_LABELS, labels)
                .await
                .map_err(GenerateError::Write)?;
        }
    }
    report.claims = written;
    report.bulk_rows = report.members
        + report.providers
        + report.policies
        + report.claims
        + report.lines
        + report.labels;
    report.bulk_seconds = started.elapsed().as_secs_f64();

    if config.stream_claims > 0 {
        stream(conn, config, &mut factory, &mut report).await?;
    }
    Ok(report)
}

async fn write_reference(
    conn: &mut PgConnection,
    factory: &ClaimFactory,
    report: &mut Report,
) -> Result<(), GenerateError> {
    let r = factory.reference();
    let mut out = String::new();
    for m in &r.members {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            m.id,
            m.first_name,
            m.last_name,
            date(m.date_of_birth),
            m.ssn,
            m.gender,
            m.address_line,
            m.city,
            m.state,
            m.postal_code
        );
    }
    report.members = copy(conn, "COPY public.members (member_id, first_name, last_name, date_of_birth, ssn, gender, address_line, city, state, postal_code) FROM STDIN", out).await.map_err(GenerateError::Write)?;
    let mut out = String::new();
    for p in &r.providers {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            p.id, p.npi, p.name, p.provider_type, p.specialty, p.state
        );
    }
    report.providers = copy(conn, "COPY public.providers (provider_id, npi, name, provider_type, specialty, state) FROM STDIN", out).await.map_err(GenerateError::Write)?;
    let mut out = String::new();
    for p in &r.policies {
        let end = p.coverage_end.map(date).unwrap_or_else(|| "\\N".into());
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{end}\t{}",
            p.id,
            p.member_id,
            p.plan_code,
            date(p.coverage_start),
            p.status()
        );
    }
    report.policies = copy(conn, "COPY public.policies (policy_id, member_id, plan_code, coverage_start, coverage_end, status) FROM STDIN", out).await.map_err(GenerateError::Write)?;
    Ok(())
}

/// A lifecycle step waiting for its turn.
enum Step {
    Adjudicate(i64, i64),
    Settle(i64, i64),
    Correct(Claim),
    VoidAndDelete(i64),
}

async fn insert_claim(
    conn: &mut PgConnection,
    claim: &Claim,
    label: Option<&Label>,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    let (mut c, mut l) = (String::new(), String::new());
    claim_row(&mut c, claim);
    line_rows(&mut l, claim);
    copy(&mut tx, COPY_CLAIMS, c).await?;
    copy(&mut tx, COPY_LINES, l).await?;
    if let Some(label) = label {
        let mut out = String::new();
        label_row(&mut out, label);
        copy(&mut tx, COPY_LABELS, out).await?;
    }
    tx.commit().await
}

/// New claims at `config.rate` per second, and earlier ones moving through their lifecycle:
/// adjudicated, then paid or denied; some corrected by a replacement claim, some voided and deleted.
async fn stream(
    conn: &mut PgConnection,
    config: &GeneratorConfig,
    factory: &mut ClaimFactory,
    report: &mut Report,
) -> Result<(), GenerateError> {
    let started = Instant::now();
    let (from, to) = factory.stream_window();
    let mut pending: std::collections::VecDeque<Step> = Default::default();
    let mut inserted = 0u64;
    let interval = config.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    while inserted < u64::from(config.stream_claims) {
        for (mut claim, label) in factory.next(from, to) {
            claim.status = Status::Submitted;
            claim.allowed_cents = None;
            claim.paid_cents = None;
            insert_claim(conn, &claim, label.as_ref())
                .await
                .map_err(GenerateError::Write)?;
            report.claims += 1;
            report.lines += claim.lines.len() as u64;
            report.labels += u64::from(label.is_some());
            inserted += 1;
            let roll = factory.rng().random_range(0..100);
            pending.push_back(match roll {
                0..=2 => Step::Correct(claim.clone()),
                3..=4 => Step::VoidAndDelete(claim.id),
                _ => Step::Adjudicate(claim.id, claim.billed_cents),
            });
        }
        // Work off lifecycle steps as fast as claims make them (about two per claim, a
        // little more with corrections), so the queue stays short: left to grow, it was
        // written all at once when the claims ended (a burst of ~600 updates closing a
        // ten-minute soak at 100 claims/s).
        for _ in 0..3 {
            if pending.len() < 8 {
                break;
            }
            let Some(step) = pending.pop_front() else {
                break;
            };
            apply_step(conn, factory, step, &mut pending, report)
                .await
                .map_err(GenerateError::Write)?;
        }
        if let Some(interval) = interval {
            let due = interval.mul_f64(inserted as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    while let Some(step) = pending.pop_front() {
        apply_step(conn, factory, step, &mut pending, report)
            .await
            .map_err(GenerateError::Write)?;
    }
    report.stream_seconds = started.elapsed().as_secs_f64();
    Ok(())
}

async fn apply_step(
    conn: &mut PgConnection,
    factory: &mut ClaimFactory,
    step: Step,
    pending: &mut std::collections::VecDeque<Step>,
    report: &mut Report,
) -> Result<(), sqlx::Error> {
    match step {
        Step::Adjudicate(id, billed) => {
            let allowed = billed * factory.rng().random_range(55..95) / 100;
            sqlx::query("UPDATE public.claims SET status = 'ADJUDICATED', allowed_amount = $2::numeric / 100, updated_at = now() WHERE claim_id = $1")
                .bind(id)
                .bind(allowed)
                .execute(&mut *conn)
                .await?;
            report.updates += 1;
            pending.push_back(Step::Settle(id, allowed));
        }
        Step::Settle(id, allowed) => {
            let denied = factory.rng().random_range(0..100) < 12;
            let paid = if denied {
                0
            } else {
                allowed * factory.rng().random_range(70..100) / 100
            };
            sqlx::query("UPDATE public.claims SET status = $2, paid_amount = $3::numeric / 100, updated_at = now() WHERE claim_id = $1")
                .bind(id)
                .bind(if denied { "DENIED" } else { "PAID" })
                .bind(paid)
                .execute(&mut *conn)
                .await?;
            report.updates += 1;
        }
        Step::Correct(original) => {
            // A replacement claim (frequency 7) supersedes the original, which is voided.
            let (from, to) = factory.stream_window();
            let mut replacement = factory.next(from, to).remove(0).0;
            replacement.member_id = original.member_id;
            replacement.policy_id = original.policy_id;
            replacement.provider_id = original.provider_id;
            replacement.claim_type = original.claim_type;
            replacement.service_date_from = original.service_date_from;
            replacement.service_date_to = original.service_date_to;
            replacement.lines = original.lines.clone();
            replacement.billed_cents = original.billed_cents;
            replacement.diagnosis_codes = original.diagnosis_codes.clone();
            replacement.place_of_service = original.place_of_service;
            replacement.status = Status::Submitted;
            replacement.allowed_cents = None;
            replacement.paid_cents = None;
            replacement.frequency_code = 7;
            replacement.original_claim_id = Some(original.id);
            for line in &mut replacement.lines {
                line.modifiers = vec!["25"];
            }
            insert_claim(conn, &replacement, None).await?;
            sqlx::query(
                "UPDATE public.claims SET status = 'VOID', updated_at = now() WHERE claim_id = $1",
            )
            .bind(original.id)
            .execute(&mut *conn)
            .await?;
            report.claims += 1;
            report.updates += 1;
            pending.push_back(Step::Adjudicate(replacement.id, replacement.billed_cents));
        }
        Step::VoidAndDelete(id) => {
            sqlx::query("DELETE FROM public.claims WHERE claim_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            report.deletes += 1;
        }
    }
    Ok(())
}

/// Connects to `url` (sqlx URL syntax).
pub async fn connect(
    options: &sqlx::postgres::PgConnectOptions,
) -> Result<PgConnection, GenerateError> {
    PgConnection::connect_with(options)
        .await
        .map_err(GenerateError::Connect)
}
