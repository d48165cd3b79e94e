//! A loopback TCP proxy that can stop forwarding without closing (a
//! half-dead connection as a client sees it) and close every connection at
//! once (a forced disconnect).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
    /// Bumped to close every connection open at that moment.
    severed: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    /// Until when a new connection is closed as soon as it is accepted.
    refusing: Arc<Mutex<Option<tokio::time::Instant>>>,
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
        let (severed, _) = watch::channel(0_u64);
        let severs = severed.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let refusing = Arc::new(Mutex::new(None::<tokio::time::Instant>));
        let refused = Arc::clone(&refusing);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let until = *refused
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if until.is_some_and(|t| tokio::time::Instant::now() < t) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, states.subscribe(), severs.subscribe()));
                tokio::spawn(pump(sr, cw, states.subscribe(), severs.subscribe()));
            }
        });
        Self {
            addr,
            state,
            severed,
            accepted,
            refusing,
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

    /// Close every connection open now, both ways; later ones are
    /// forwarded as usual.
    pub fn sever(&self) {
        self.severed.send_modify(|n| *n += 1);
    }

    /// [`sever`](Self::sever), then close every connection accepted during
    /// `refuse` at once: a client's reconnects fail, and it backs off.
    pub fn sever_refusing(&self, refuse: Duration) {
        *self
            .refusing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(tokio::time::Instant::now() + refuse);
        self.sever();
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Forward `from` to `to` until either side closes or the proxy severs
/// the connection; returning drops both halves, which closes them.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<Forwarding>,
    mut severed: watch::Receiver<u64>,
) {
    severed.mark_unchanged();
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        if state.wait_for(|s| *s == Forwarding::Flowing).await.is_err() {
            return;
        }
        let read = tokio::select! {
            r = from.read(&mut buf) => r,
            _ = severed.changed() => return,
        };
        let n = match read {
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
