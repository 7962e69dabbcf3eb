//! A private tansu broker on a free port: fresh topics and groups for one test or bench,
//! and the broker-unbound figure of the benches. Killed when dropped. Needs `tansu` on
//! the PATH (scripts/install-deps.sh installs it).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_pipeline::topology::KafkaSettings;

/// A tansu broker on a free port: the memory engine, or (for SASL) sqlite in a
/// temporary directory.
pub struct MemoryBroker {
    child: Child,
    address: String,
    _dir: Option<tempfile::TempDir>,
}

/// A SCRAM user of a broker that requires authentication.
pub struct ScramUser<'a> {
    pub name: &'a str,
    pub password: &'a str,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: &'a str,
}

/// Starts `tansu broker` with `args` in `dir`; its listener up within 30 s, else `None`.
pub(crate) fn spawn_broker(address: &str, args: &[&str], dir: Option<&Path>) -> Option<Child> {
    let mut command = Command::new("tansu");
    command
        .arg("broker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir); // tansu resolves a sqlite path against it
    }
    let mut child = command.spawn().ok()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(address).is_err() {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child)
}

pub(crate) fn free_address() -> Option<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    Some(format!("127.0.0.1:{port}"))
}

impl MemoryBroker {
    pub fn start() -> Option<Self> {
        Self::start_advertising(None)
    }

    /// A broker that tells clients to reach it at `advertised` (`host:port`: a TLS
    /// terminator in front of it, say) rather than at its own port.
    pub fn start_advertising(advertised: Option<&str>) -> Option<Self> {
        let address = free_address()?;
        let url = format!("tcp://{address}");
        let advertised = format!("tcp://{}", advertised.unwrap_or(&address));
        let args = [
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
            "memory://tansu/",
        ];
        let child = spawn_broker(&address, &args, None)?;
        Some(Self {
            child,
            address,
            _dir: None,
        })
    }

    /// A broker that requires SASL authentication of every client (`tansu broker
    /// --authentication`), knowing `users`. tansu keeps SCRAM credentials in its storage
    /// and only an open broker takes new ones, so this creates them with
    /// `tansu user create` on the broker started without authentication, then restarts it
    /// with authentication on the same sqlite file.
    pub fn start_with_scram_users(users: &[ScramUser<'_>]) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let address = free_address()?;
        let url = format!("tcp://{address}");
        let args = [
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "sqlite://tansu.db",
        ];
        let mut open = spawn_broker(&address, &args, Some(dir.path()))?;
        let created = users.iter().all(|user| {
            let mechanism = match user.mechanism {
                "SCRAM-SHA-256" => "scram256",
                _ => "scram512",
            };
            Command::new("tansu")
                .args(["user", "create", "--broker", &url, "--mechanism", mechanism])
                .args([user.name, user.password])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        });
        let _ = open.kill();
        let _ = open.wait();
        if !created {
            return None;
        }
        let mut secured = args.to_vec();
        secured.push("--authentication");
        let child = spawn_broker(&address, &secured, Some(dir.path()))?;
        Some(Self {
            child,
            address,
            _dir: Some(dir),
        })
    }

    /// `host:port` to bootstrap from.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn settings(&self) -> KafkaSettings {
        serde_yaml_ng::from_str(&format!("{{bootstrap_servers: '{}'}}", self.address))
            .expect("kafka settings")
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
