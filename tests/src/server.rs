//! A nats-server of a test's own: free loopback port, own store directory,
//! killed on drop (X3).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The environment variable naming the nats-server binary.
pub const SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// How long a server may take to accept clients.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory under the system temp dir.
    ///
    /// # Panics
    /// If it cannot be created.
    #[must_use]
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "slipstream-it-{label}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self(path)
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How clients authenticate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServerAuth {
    /// No authentication.
    #[default]
    None,
    /// `--user` / `--pass`.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
}

/// Whether the server speaks TLS to clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServerTls {
    /// Plain TCP.
    #[default]
    Off,
    /// TLS with this certificate chain and key (PEM files).
    On {
        /// The certificate.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
        /// When set, clients must present a certificate signed by this CA.
        client_ca: Option<PathBuf>,
    },
}

/// Options for [`NatsServer::start_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// Client authentication.
    pub auth: ServerAuth,
    /// Client TLS.
    pub tls: ServerTls,
}

/// The path of the nats-server binary from [`SERVER_BIN_ENV`].
///
/// # Panics
/// With instructions when it is unset or missing.
#[must_use]
pub fn server_bin() -> PathBuf {
    let Some(bin) = std::env::var_os(SERVER_BIN_ENV) else {
        panic!(
            "{SERVER_BIN_ENV} is not set: run the live suites with `cargo xtask it` \
             (which provisions nats-server), or set {SERVER_BIN_ENV} to a nats-server binary"
        );
    };
    let bin = PathBuf::from(bin);
    assert!(
        bin.is_file(),
        "{SERVER_BIN_ENV}={} is not a file: run `cargo xtask it` or point it at a nats-server binary",
        bin.display()
    );
    bin
}

/// A running nats-server with JetStream on 127.0.0.1.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    options: ServerOptions,
    dir: TempDir,
    child: Option<Child>,
    version: (u64, u64, u64),
}

impl NatsServer {
    /// Start a server without authentication.
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    /// Start a server with `options`.
    ///
    /// # Panics
    /// When the binary is missing or the server does not become ready.
    pub async fn start_with(options: ServerOptions) -> Self {
        let bin = server_bin();
        let version = read_version(&bin).await;
        let mut server = Self {
            bin,
            port: 0,
            options,
            dir: TempDir::new("nats"),
            child: None,
            version,
        };
        let mut last_error = String::new();
        // A free port can be taken by someone else before the server binds it.
        for _ in 0..5 {
            server.port = free_port();
            match server.launch().await {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("nats-server did not start: {last_error}");
    }

    async fn launch(&mut self) -> Result<(), String> {
        let store = self.dir.path().join("store");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-js")
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        if let ServerAuth::UserPassword { user, password } = &self.options.auth {
            cmd.arg("--user").arg(user).arg("--pass").arg(password);
        }
        if let ServerTls::On {
            cert,
            key,
            client_ca,
        } = &self.options.tls
        {
            cmd.arg("--tls")
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key);
            if let Some(ca) = client_ca {
                cmd.arg("--tlsverify").arg("--tlscacert").arg(ca);
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "nats-server exited early ({status}); log in {}",
                    self.dir.path().display()
                ));
            }
            if ready(self.addr()).await {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                return Err(format!("not ready within {READY_WITHIN:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The client URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The listening address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's version (major, minor, patch).
    #[must_use]
    pub fn version(&self) -> (u64, u64, u64) {
        self.version
    }

    /// Whether the server is at least `major.minor`.
    #[must_use]
    pub fn at_least(&self, major: u64, minor: u64) -> bool {
        (self.version.0, self.version.1) >= (major, minor)
    }

    /// Kill the server and wait for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stop and start again on the same port and store directory.
    ///
    /// # Panics
    /// When the server does not come back.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut last = String::new();
        // The port may linger briefly after the kill.
        for _ in 0..50 {
            match self.launch().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("nats-server did not restart on port {}: {last}", self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// Whether the server greets a client with its INFO line.
async fn ready(addr: SocketAddr) -> bool {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
    else {
        return false;
    };
    let mut buf = [0_u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), stream.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"INFO"
    )
}

async fn read_version(bin: &Path) -> (u64, u64, u64) {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().rsplit('v').next().unwrap_or_default();
    let mut parts = v.split('.').map(|p| p.trim().parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}
