//! A durable tansu broker of one test, behind a proxy that can cut its connections.

use std::process::Child;
use std::time::{Duration, Instant};

use super::broker::{free_address, spawn_broker};

/// A durable broker of one test: tansu on sqlite in a temporary directory, which clients
/// reach only through a proxy (it advertises the proxy's address), so a test can cut
/// every connection to it, `kill -9` it and start it again on the same data.
pub struct DurableBroker {
    child: Option<Child>,
    /// Where tansu itself listens (the proxy's target).
    listen: String,
    pub proxy: super::proxy::Proxy,
    dir: tempfile::TempDir,
}

impl DurableBroker {
    /// `None` when tansu cannot be started (not installed, no free port).
    pub async fn start() -> Option<Self> {
        let listen = free_address()?;
        let proxy = super::proxy::proxy(listen.clone()).await;
        let mut broker = Self {
            child: None,
            listen,
            proxy,
            dir: tempfile::tempdir().ok()?,
        };
        broker.spawn().then_some(broker)
    }

    fn spawn(&mut self) -> bool {
        let url = format!("tcp://{}", self.listen);
        let advertised = format!("tcp://127.0.0.1:{}", self.proxy.port);
        let args = [
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
            // As scripts/services.sh runs it: no periodic maintenance pass.
            "sqlite://tansu.db?maintenance_interval=100000h",
        ];
        self.child = spawn_broker(&self.listen, &args, Some(self.dir.path()));
        self.child.is_some()
    }

    /// `host:port` to bootstrap from: the proxy.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }

    /// `kill -9`, then a start on the same data; false if it did not come back.
    pub fn crash_and_restart(&mut self) -> bool {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(&self.listen).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn()
    }
}

impl Drop for DurableBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
