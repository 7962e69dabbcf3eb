//! What the bench reads off the machine and the services: who is reachable, how much room
//! there is, a process's peak memory and CPU time, and a deployment's `/metrics`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde::Serialize;
use sqlx::Connection;

use super::{BenchError, BenchOptions};

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_default(),
            memory_mib: meminfo_kib("MemTotal:").unwrap_or(0) / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

fn meminfo_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// PostgreSQL, the broker and the registry answer; otherwise which one does not, and how to fix it.
pub async fn check_services(options: &BenchOptions) -> Result<(), BenchError> {
    sqlx::PgConnection::connect(&options.pg_admin_url)
        .await
        .map_err(|e| BenchError::ServiceDown {
            service: "PostgreSQL",
            address: options.pg_admin_url.clone(),
            variable: "STRATA_PG_ADMIN_URL",
            detail: e.to_string(),
        })?;
    let brokers = options.kafka_brokers.clone();
    let kafka = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .map_err(|e| e.to_string())?;
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    kafka.map_err(|detail| BenchError::ServiceDown {
        service: "the Kafka broker",
        address: options.kafka_brokers.clone(),
        variable: "STRATA_KAFKA_BROKERS",
        detail,
    })?;
    let subjects = format!("{}/subjects", options.registry_url.trim_end_matches('/'));
    let answer = reqwest::get(&subjects)
        .await
        .and_then(|r| r.error_for_status());
    answer.map_err(|e| BenchError::ServiceDown {
        service: "the schema registry",
        address: options.registry_url.clone(),
        variable: "STRATA_SCHEMA_REGISTRY_URL",
        detail: e.to_string(),
    })?;
    Ok(())
}

/// Rough room a claim takes on its way: its rows in the source, the hot and warm stores,
/// its events in every topic (CDC, processor outputs, changelogs) and its state.
const BYTES_PER_CLAIM: u64 = 24 * 1024;
/// Memory the services and a deployment need besides the page cache.
const MEMORY_NEEDED_MIB: u64 = 1024;

/// Refuses a scale that cannot fit the free disk space or memory, before anything is written.
pub fn check_capacity(options: &BenchOptions) -> Result<(), BenchError> {
    let claims = u64::from(options.claims) * 2
        + u64::from(options.stream_claims)
        + (options.rate * options.seconds as f64) as u64;
    let needed = claims * BYTES_PER_CLAIM / (1 << 20);
    let place = options
        .report
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Some(available) = free_mib(place) {
        if needed > available {
            return Err(BenchError::TooBig {
                what: format!("{claims} claims"),
                needed_mib: needed,
                available_mib: available,
                place: place.display().to_string(),
            });
        }
    }
    if let Some(available) = meminfo_kib("MemAvailable:").map(|k| k / 1024) {
        if available < MEMORY_NEEDED_MIB {
            return Err(BenchError::TooBig {
                what: "a deployment beside the services".into(),
                needed_mib: MEMORY_NEEDED_MIB,
                available_mib: available,
                place: "memory".into(),
            });
        }
    }
    Ok(())
}

/// Free space of the file system holding `path`, from `df`.
fn free_mib(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-m"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Peak resident memory and CPU time of a running process, from `/proc`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessStats {
    pub peak_rss_mib: f64,
    /// Resident memory now.
    pub rss_mib: f64,
    pub cpu_seconds: f64,
}

pub fn process_stats(pid: u32) -> ProcessStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let (peak_kib, rss_kib) = (kib("VmHWM:"), kib("VmRSS:"));
    // Fields 14 and 15 of /proc/PID/stat (after the command in parentheses): utime, stime.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks: f64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0);
    ProcessStats {
        peak_rss_mib: peak_kib / 1024.0,
        rss_mib: rss_kib / 1024.0,
        // USER_HZ is 100 on Linux.
        cpu_seconds: ticks / 100.0,
    }
}

/// One scrape of a deployment's `/metrics`: series (name with labels) → value.
#[derive(Debug, Default, Clone)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    pub async fn fetch(listen: &str) -> Result<Self, String> {
        let text = reqwest::get(format!("http://{listen}/metrics"))
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("reading http://{listen}/metrics: {e}"))?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_string(), value.parse().ok()?))
                })
                .collect(),
        ))
    }

    /// Sum of metric `name` over the series of `component` (all series when `None`).
    pub fn sum(&self, name: &str, component: Option<&str>) -> f64 {
        let label = component.map(|c| format!("component=\"{c}\""));
        self.0
            .iter()
            .filter(|(series, _)| {
                series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
                    && label.as_ref().is_none_or(|l| series.contains(l.as_str()))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Every series of counter `name`, to tell when a deployment stopped moving.
    pub fn counters(&self, name: &str) -> Vec<(String, f64)> {
        self.0
            .iter()
            .filter(|(s, _)| s.starts_with(name))
            .map(|(s, v)| (s.clone(), *v))
            .collect()
    }
}

/// Seconds `pg_recvlogical` takes to decode `slot` of `url` up to `end` into /dev/null.
pub fn recvlogical(
    pg_bin: &Path,
    url: &str,
    slot: &str,
    publication: &str,
    end: &str,
) -> Result<f64, String> {
    let options: sqlx::postgres::PgConnectOptions =
        url.parse().map_err(|e| format!("{url}: {e}"))?;
    let bin = pg_bin.join("pg_recvlogical");
    let started = std::time::Instant::now();
    let status = std::process::Command::new(&bin)
        .args(["-h", options.get_host(), "-p"])
        .arg(options.get_port().to_string())
        .args(["-U", options.get_username(), "-d"])
        .arg(options.get_database().unwrap_or("postgres"))
        .args(["--slot", slot, "--start", "--no-loop", "--endpos", end])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={publication}"))
        .args(["-f", "/dev/null"])
        .status()
        .map_err(|e| format!("{}: {e} (set --pg-bin)", bin.display()))?;
    if !status.success() {
        return Err(format!("pg_recvlogical failed: {status}"));
    }
    Ok(started.elapsed().as_secs_f64())
}
