//! A TCP proxy in front of a server (PostgreSQL as a store) that can refuse and cut
//! connections: a store that is down, for the fault tests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A TCP proxy in front of PostgreSQL that can refuse and cut connections.
pub struct Proxy {
    pub port: u16,
    /// While set, new connections are dropped and live ones cut.
    pub down: Arc<AtomicBool>,
    /// Connections currently relayed.
    pub live: Arc<AtomicUsize>,
}

pub async fn proxy(target: String) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let down = Arc::new(AtomicBool::new(false));
    let live = Arc::new(AtomicUsize::new(0));
    let (flag, counter) = (down.clone(), live.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if flag.load(Ordering::SeqCst) {
                continue; // dropped: connection refused in effect
            }
            let (target, flag, counter) = (target.clone(), flag.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                let cut = async {
                    while !flag.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                tokio::select! { _ = copy => {}, _ = cut => {} }
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Proxy { port, down, live }
}
