//! A writer that changes the claims database while faults happen: inserts, updates and
//! deletes of every captured table, one change per transaction.
//!
//! Every update writes a value no earlier change used (a counter, in an amount, a count
//! or a text column), so a lost or reverted final update always shows as a difference.
//! A change whose connection broke (PostgreSQL crashed) may or may not have committed:
//! it is counted as uncertain and the writer reconnects; the oracle compares with what
//! the source holds, so either outcome is checked. Any other error is a bug in the
//! writer or the database and is kept for the test to fail on, never swallowed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use super::Lcg;

/// What the writer did, by kind.
#[derive(Debug, Default)]
pub struct Counts {
    pub inserts: AtomicU64,
    pub updates: AtomicU64,
    pub deletes: AtomicU64,
    /// Changes whose connection broke before their commit was confirmed.
    pub uncertain: AtomicU64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.inserts.load(Ordering::SeqCst)
            + self.updates.load(Ordering::SeqCst)
            + self.deletes.load(Ordering::SeqCst)
    }

    pub fn summary(&self) -> String {
        format!(
            "{} inserts, {} updates, {} deletes ({} uncertain)",
            self.inserts.load(Ordering::SeqCst),
            self.updates.load(Ordering::SeqCst),
            self.deletes.load(Ordering::SeqCst),
            self.uncertain.load(Ordering::SeqCst)
        )
    }
}

pub struct Writer {
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    pub counts: Arc<Counts>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy)]
enum Kind {
    Insert,
    Update,
    Delete,
}

/// The `n`-th change: its kind and SQL. `n` is unique in the run.
fn change(rng: &mut Lcg, n: u64) -> (Kind, String) {
    let pick = |table: &str, key: &str| {
        format!("(SELECT {key} FROM public.{table} ORDER BY random() LIMIT 1)")
    };
    let status = ["SUBMITTED", "ADJUDICATED", "PAID", "DENIED"][rng.below(4) as usize];
    match rng.below(100) {
        0..=34 => (
            Kind::Update,
            format!(
                "UPDATE public.claims SET status = '{status}', allowed_amount = {n}, updated_at = now() WHERE claim_id = {}",
                pick("claims", "claim_id")
            ),
        ),
        35..=49 => (
            Kind::Update,
            format!(
                "UPDATE public.claim_lines SET units = {n} WHERE (claim_id, line_number) = {}",
                pick("claim_lines", "claim_id, line_number")
            ),
        ),
        50..=54 => (
            Kind::Update,
            format!(
                "UPDATE public.members SET address_line = '{n} Change Street', updated_at = now() WHERE member_id = {}",
                pick("members", "member_id")
            ),
        ),
        55..=59 => (
            Kind::Update,
            format!(
                "UPDATE public.providers SET specialty = 'specialty {n}', updated_at = now() WHERE provider_id = {}",
                pick("providers", "provider_id")
            ),
        ),
        60..=64 => (
            Kind::Update,
            format!(
                "UPDATE public.policies SET plan_code = 'PLAN-{n}', updated_at = now() WHERE policy_id = {}",
                pick("policies", "policy_id")
            ),
        ),
        65..=84 => {
            // A copy of a random claim (and its lines) under a new id.
            let id = 9_000_000_000 + n;
            (
                Kind::Insert,
                format!(
                    "WITH src AS (SELECT * FROM public.claims ORDER BY random() LIMIT 1), \
                     c AS (INSERT INTO public.claims SELECT (jsonb_populate_record(NULL::public.claims, to_jsonb(src) || jsonb_build_object('claim_id', {id}, 'status', '{status}', 'allowed_amount', {n}))).* FROM src RETURNING claim_id) \
                     INSERT INTO public.claim_lines SELECT (jsonb_populate_record(NULL::public.claim_lines, to_jsonb(l) || jsonb_build_object('claim_id', {id}))).* \
                     FROM public.claim_lines l JOIN src ON l.claim_id = src.claim_id WHERE EXISTS (SELECT 1 FROM c)"
                ),
            )
        }
        85..=94 => (
            Kind::Delete,
            format!(
                "DELETE FROM public.claims WHERE claim_id = {}",
                pick("claims", "claim_id")
            ),
        ),
        _ => (
            Kind::Delete,
            format!(
                "DELETE FROM public.claim_lines WHERE (claim_id, line_number) = {}",
                pick("claim_lines", "claim_id, line_number")
            ),
        ),
    }
}

/// Whether `e` means the connection is gone (the server stopped or crashed), as opposed
/// to an error in the change itself.
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}

/// Starts a writer on `url`, paused.
pub fn writer(url: String, seed: u64) -> Writer {
    let paused = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let errors = Arc::new(Mutex::new(Vec::new()));
    let (p, s, c, errs) = (paused.clone(), stop.clone(), counts.clone(), errors.clone());
    let task = tokio::spawn(async move {
        let mut rng = Lcg(seed);
        let mut n = 0u64;
        let mut conn: Option<PgConnection> = None;
        while !s.load(Ordering::SeqCst) {
            if p.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if conn.is_none() {
                conn = PgConnection::connect(&url).await.ok();
            }
            let Some(db) = conn.as_mut() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            n += 1;
            let (kind, sql) = change(&mut rng, n);
            match sqlx::query(&sql).execute(&mut *db).await {
                Ok(done) if done.rows_affected() > 0 => {
                    let counter = match kind {
                        Kind::Insert => &c.inserts,
                        Kind::Update => &c.updates,
                        Kind::Delete => &c.deletes,
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {} // the table it picked from was empty: nothing changed
                Err(e) if connection_lost(&e) => {
                    c.uncertain.fetch_add(1, Ordering::SeqCst);
                    conn = None;
                }
                Err(e) => {
                    errs.lock().unwrap().push(format!("{e}: {sql}"));
                    conn = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Writer {
        paused,
        stop,
        counts,
        errors,
        task,
    }
}

impl Writer {
    /// Lets the writer commit `n` more changes (waiting out outages).
    pub async fn write(&self, n: u64, deadline: Duration) {
        let target = self.counts.total() + n;
        self.resume();
        let counts = self.counts.clone();
        super::wait_for("the writer's changes", deadline, || {
            let done = counts.total() >= target;
            async move { done.then_some(()) }
        })
        .await;
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Fails the test with the changes the writer could not make for a reason other
    /// than a lost connection.
    pub fn assert_no_errors(&self) {
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "the writer failed: {errors:#?}");
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the writer ends");
    }
}
