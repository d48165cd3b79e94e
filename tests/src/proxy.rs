//! A loopback TCP proxy that can stop forwarding without closing: a
//! half-dead connection as a client sees it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Whether bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// Bytes are forwarded both ways.
    Flowing,
    /// Nothing is read or written; connections stay open.
    Stalled,
}

/// A proxy on a free loopback port in front of `upstream`.
#[derive(Debug)]
pub struct StallProxy {
    addr: SocketAddr,
    state: watch::Sender<Forwarding>,
    accepted: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl StallProxy {
    /// Start forwarding to `upstream`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let (state, _) = watch::channel(Forwarding::Flowing);
        let states = state.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, states.subscribe()));
                tokio::spawn(pump(sr, cw, states.subscribe()));
            }
        });
        Self {
            addr,
            state,
            accepted,
            accept,
        }
    }

    /// The URL clients dial.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// How many client connections the proxy has accepted.
    #[must_use]
    pub fn connections_accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stop forwarding; connections stay open.
    pub fn stall(&self) {
        self.state.send_replace(Forwarding::Stalled);
    }

    /// Forward again.
    pub fn resume(&self) {
        self.state.send_replace(Forwarding::Flowing);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<Forwarding>,
) {
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        if state.wait_for(|s| *s == Forwarding::Flowing).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before a stall are held back until the proxy flows again.
        if state.wait_for(|s| *s == Forwarding::Flowing).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
