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

/// A TLS server in front of a plain one: terminates TLS with the test server certificate
/// of `scripts/services.sh` (for `localhost` and 127.0.0.1, signed by `ca.pem` in
/// `$STRATA_TLS_DIR`), listening on loopback `port`, and relays the bytes to `target`.
pub async fn tls_terminator(port: u16, target: String) {
    let dir = super::tls_dir();
    let read = |name: &str| {
        std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name} in {}: {e}", dir.display()))
    };
    let identity = tokio_native_tls::native_tls::Identity::from_pkcs8(
        &read("server.crt"),
        &read("server.key"),
    )
    .expect("the test server certificate and key");
    let acceptor = tokio_native_tls::TlsAcceptor::from(
        tokio_native_tls::native_tls::TlsAcceptor::new(identity).expect("a TLS acceptor"),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the TLS terminator's port");
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let (acceptor, target) = (acceptor.clone(), target.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends its handshake here.
                let Ok(mut inbound) = acceptor.accept(inbound).await else {
                    return;
                };
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
}
