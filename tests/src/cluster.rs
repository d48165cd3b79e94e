//! A three-node nats-server cluster on loopback (issue 20): free client
//! and route ports, JetStream with a store directory per server, server
//! names `n0`..`n2`; started per test and torn down on drop, with the
//! faults a cluster has (kill, restart, pause) and the stream leader found
//! and stepped down through the JetStream API.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::admin::{Admin, wait_until};
use crate::server::{TempDir, server_bin};

/// How long a server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long the cluster may take to elect a JetStream meta leader, or a
/// stream to settle.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);
/// The cluster's name.
const CLUSTER: &str = "slipstream-it";

/// What the servers tell clients about the rest of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Discovery {
    /// Each server advertises every client URL it knows, as by default: a
    /// client reconnects to any of them.
    #[default]
    Advertised,
    /// Nothing is advertised (`--no_advertise`): a client knows only its
    /// seed list, so a proxy in front of each server stays in its path.
    SeedsOnly,
}

/// One server of a [`NatsCluster`].
#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    route_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Three nats-servers routed into one JetStream cluster.
#[derive(Debug)]
pub struct NatsCluster {
    bin: PathBuf,
    discovery: Discovery,
    nodes: Vec<Node>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Start three servers and wait until JetStream answers on each.
    ///
    /// # Panics
    /// When a server does not start or the cluster does not form within
    /// its deadline.
    pub async fn start() -> Self {
        Self::start_with(Discovery::Advertised).await
    }

    /// [`start`](Self::start), with what the servers advertise to clients.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub async fn start_with(discovery: Discovery) -> Self {
        let mut last = String::new();
        // A free port can be taken by someone else before its server binds
        // it: start the whole cluster again on new ports.
        for _ in 0..3 {
            match Self::try_start(discovery).await {
                Ok(cluster) => return cluster,
                Err(e) => last = e,
            }
        }
        panic!("the cluster did not start: {last}");
    }

    async fn try_start(discovery: Discovery) -> Result<Self, String> {
        let bin = server_bin();
        let dir = TempDir::new("cluster");
        let nodes = (0..3)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                route_port: free_port(),
                dir: dir.path().join(format!("n{i}")),
                child: None,
            })
            .collect();
        let mut cluster = Self {
            bin,
            discovery,
            nodes,
            _dir: dir,
        };
        for i in 0..3 {
            cluster.launch(i).await?;
        }
        cluster.wait_for_jetstream().await;
        Ok(cluster)
    }

    /// Every client URL, comma-separated (the seed list clients take).
    #[must_use]
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `i`'s client URL.
    #[must_use]
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Server `i`'s client address.
    #[must_use]
    pub fn addr(&self, i: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.nodes[i].port))
    }

    /// Server `i`'s name.
    #[must_use]
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    async fn launch(&mut self, i: usize) -> Result<(), String> {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.route_port))
            .collect();
        let node = &mut self.nodes[i];
        std::fs::create_dir_all(&node.dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", node.dir.display()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("server.log"))
            .unwrap_or_else(|e| panic!("server log: {e}"));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("server log: {e}"));
        let mut command = Command::new(&self.bin);
        if self.discovery == Discovery::SeedsOnly {
            command.arg("--no_advertise");
        }
        let child = command
            .arg("-js")
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(node.port.to_string())
            .arg("-sd")
            .arg(node.dir.join("store"))
            .arg("--name")
            .arg(&node.name)
            .arg("--cluster_name")
            .arg(CLUSTER)
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", node.route_port))
            .arg("--routes")
            .arg(routes.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        node.child = Some(child);
        let addr = format!("127.0.0.1:{}", node.port);
        let up = wait_until(READY_WITHIN, || async {
            tokio::net::TcpStream::connect(&addr).await.is_ok()
        })
        .await;
        if up {
            return Ok(());
        }
        let log = std::fs::read_to_string(node.dir.join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        Err(format!(
            "{} did not accept connections on {addr}; its log ends:\n{}",
            node.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    /// Wait until JetStream (with a meta leader) answers on every running
    /// server.
    ///
    /// # Panics
    /// When it does not within the deadline.
    pub async fn wait_for_jetstream(&self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                continue;
            }
            let admin = Admin::connect(&self.url(i)).await;
            let ok = wait_until(SETTLE_WITHIN, || async {
                admin.api("INFO", json!({})).await.is_ok()
            })
            .await;
            assert!(ok, "JetStream did not come up on {}", self.nodes[i].name);
        }
    }

    /// Kill server `i` (SIGKILL) and wait for it to exit.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Start server `i` again on its ports and store directory.
    ///
    /// # Panics
    /// When it does not come back.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i).await;
        let mut last = String::new();
        // The killed server's ports may linger briefly.
        for _ in 0..20 {
            match self.launch(i).await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} did not restart: {last}", self.nodes[i].name);
    }

    /// Stop server `i` without killing it (SIGSTOP): its connections stay
    /// open and silent.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Let a paused server `i` go on (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let Some(pid) = self.nodes[i].child.as_ref().and_then(Child::id) else {
            panic!("{} is not running", self.nodes[i].name);
        };
        let sent = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill {signal}: {e}"));
        assert!(sent.success(), "kill {signal} {pid} failed");
    }

    /// A JetStream API call on any server that answers.
    async fn api(&self, admin: &Admin, api: &str) -> Result<Value, String> {
        admin.api(api, json!({})).await
    }

    /// The index of `stream`'s leader, if it has one now.
    pub async fn stream_leader(&self, admin: &Admin, stream: &str) -> Option<usize> {
        let info = self
            .api(admin, &format!("STREAM.INFO.{stream}"))
            .await
            .ok()?;
        let leader = info["cluster"]["leader"].as_str()?;
        self.nodes.iter().position(|n| n.name == leader)
    }

    /// Ask `stream`'s leader to step down; the old leader's index.
    ///
    /// # Errors
    /// The API's refusal (no leader, no other replica current).
    pub async fn step_down(&self, admin: &Admin, stream: &str) -> Result<Option<usize>, String> {
        let before = self.stream_leader(admin, stream).await;
        self.api(admin, &format!("STREAM.LEADER.STEPDOWN.{stream}"))
            .await?;
        Ok(before)
    }

    /// Wait until `stream` has a leader and every replica is current.
    ///
    /// # Panics
    /// When it does not within the deadline.
    pub async fn wait_settled(&self, admin: &Admin, stream: &str) {
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            if let Ok(info) = self.api(admin, &format!("STREAM.INFO.{stream}")).await {
                let cluster = &info["cluster"];
                let replicas = cluster["replicas"].as_array().cloned().unwrap_or_default();
                let current = replicas
                    .iter()
                    .all(|r| r["current"].as_bool() == Some(true));
                if cluster["leader"].is_string() && current {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "stream {stream} did not settle within {SETTLE_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                // A paused server must run again to die promptly.
                if let Some(pid) = child.id() {
                    let _ = std::process::Command::new("kill")
                        .args(["-CONT", &pid.to_string()])
                        .status();
                }
                let _ = child.start_kill();
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}
