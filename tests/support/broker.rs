//! A private tansu broker with the memory engine on a free port: fresh topics and groups
//! for one test or bench, and the broker-unbound figure of the benches. Killed when
//! dropped. Needs `tansu` on the PATH (scripts/install-deps.sh installs it).

use std::time::{Duration, Instant};

use strata_pipeline::topology::KafkaSettings;

/// A tansu broker with the memory engine on a free port.
pub struct MemoryBroker {
    child: std::process::Child,
    address: String,
}

impl MemoryBroker {
    pub fn start() -> Option<Self> {
        Self::start_advertising(None)
    }

    /// A broker that tells clients to reach it at `advertised` (`host:port`: a TLS
    /// terminator in front of it, say) rather than at its own port.
    pub fn start_advertising(advertised: Option<&str>) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let advertised = format!("tcp://{}", advertised.unwrap_or(&address));
        let child = std::process::Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self { child, address })
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
