//! `cargo xtask demo` (X2): the README's walk-through. A throwaway
//! nats-server, a bucket of a few hundred keys, `slipstream mirror` stopped
//! and restarted (only the delta arrives), retention pushed past a stopped
//! mirror's cursor (detected, then repaired), `slipstream status`, and the
//! fleet path: a running mirror exporting to the NATS object store and a
//! new node bootstrapping from it. Every step says what it shows.

use std::fs::{self, File};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::XtaskError;
use crate::exec::{self, cargo};
use crate::nats::{self, VersionRequest};
use crate::workspace::Workspace;

/// The demo's bucket.
const BUCKET: &str = "edge-config";
/// How many keys the bucket starts with.
const KEYS: u32 = 300;
/// How long a mirror may take to catch up or stop.
const WITHIN: Duration = Duration::from_secs(60);

/// `cargo xtask demo`.
pub(crate) fn demo() -> Result<(), XtaskError> {
    let workspace = Workspace::load()?;
    say("Building the slipstream CLI (append-log store only, so the build stays short).");
    exec::run(cargo().args(["build", "-p", "slipstream-cli", "--no-default-features"]))?;
    let bin = workspace.target_dir.join("debug").join("slipstream");
    let server_bin = nats::provision(&workspace, &VersionRequest::Default)?;
    let scratch = Scratch::new(&workspace.target_dir.join("demo"))?;
    let server = Server::start(&server_bin, scratch.path())?;
    let cli = Cli {
        bin,
        url: server.url(),
        dir: scratch.path().to_owned(),
    };
    walk_through(&cli)?;
    say("Done. The server and every file of the demo are removed now.");
    drop(server);
    Ok(())
}

fn walk_through(cli: &Cli) -> Result<(), XtaskError> {
    say(&format!(
        "1. A throwaway nats-server runs at {}. Writing {KEYS} keys into bucket `{BUCKET}`.",
        cli.url
    ));
    for i in 0..KEYS {
        cli.put(
            &format!("routes.r{i:03}"),
            &format!("10.0.{}.{}", i / 250, i % 250),
        )?;
    }

    let node_a = cli.dir.join("node-a");
    say("2. Mirror the bucket into a local store, wait until it has caught up, stop it.");
    let mut mirror = cli.mirror(&node_a, "a-1")?;
    mirror.wait_for("caught up")?;
    mirror.stop()?;
    show(&cli.run(&["status", "--store", path(&node_a)?])?);

    say("3. While the mirror is down: 50 changes and 10 deletes. Restart it.");
    for i in 0..50 {
        cli.put(&format!("routes.r{i:03}"), "10.9.9.9")?;
    }
    for i in 290..KEYS {
        cli.run(&kv(cli, &["del", &format!("routes.r{i:03}")]))?;
    }
    let mut mirror = cli.mirror(&node_a, "a-2")?;
    mirror.wait_for("caught up")?;
    mirror.stop()?;
    say("   The restart resumed from its cursor and received only the delta:");
    show(&mirror.log_lines(&["starting mirror", "updates received"]));

    let node_b = cli.dir.join("node-b");
    say("4. Another node mirrors the same bucket and keeps running.");
    let mut other = cli.mirror(&node_b, "b")?;
    other.wait_for("caught up")?;

    say(
        "5. Node A stays down while the bucket moves on: every key is rewritten. The bucket \
         keeps one revision per key, so everything node A's cursor points into is gone.",
    );
    cli.put("scratch", "1")?;
    for i in 0..KEYS {
        cli.put(
            &format!("routes.r{i:03}"),
            &format!("10.1.{}.{}", i / 250, i % 250),
        )?;
    }
    cli.put("scratch", "2")?;
    let last = cli.run(&kv(cli, &["put", "marker", "end"]))?;
    let last = last.trim();
    say(&format!("   The bucket is at revision {last}."));

    say(
        "6. Node A restarts. NATS would silently start after the gap; slipstream checks the \
         retained range first:",
    );
    let mut restarted = cli.mirror(&node_a, "a-3")?;
    match restarted.wait_for_either("caught up")? {
        Ended::Saw => {
            say("   The engine repaired the fold itself (repair mode auto):");
            restarted.stop()?;
            show(&restarted.log_lines(&["repair", "caught up"]));
        }
        Ended::Exited(code) => {
            show(&restarted.log_lines(&["error"]));
            say(&format!(
                "   It refused to serve a fold with a hole in it (exit {code}). Repair it from \
                 an artifact of node B: stop B, export, import, resume."
            ));
            other.stop()?;
            let artifact = cli.dir.join("artifact");
            let repaired = cli.dir.join("node-a-restored");
            cli.echo_run(&[
                "export",
                "--store",
                path(&node_b)?,
                "--out",
                path(&artifact)?,
            ])?;
            cli.echo_run(&[
                "import",
                "--artifact",
                path(&artifact)?,
                "--store",
                path(&repaired)?,
            ])?;
            cli.put("after-restore", "1")?;
            let mut resumed = cli.mirror(&repaired, "a-4")?;
            resumed.wait_for("caught up")?;
            resumed.stop()?;
            say("   The restored node resumed from the artifact's cursor with just the delta:");
            show(&resumed.log_lines(&["starting mirror", "updates received"]));
            say("7. Its status against the live bucket:");
            show(&cli.run(&["status", "--store", path(&repaired)?, "--server", &cli.url])?);
            return fleet(cli, &node_b);
        }
    }
    other.stop()?;
    say("7. Node A's status against the live bucket:");
    show(&cli.run(&["status", "--store", path(&node_a)?, "--server", &cli.url])?);
    fleet(cli, &node_b)
}

/// The fleet path: a running mirror exports to the NATS object store, and
/// a brand-new node bootstraps from it.
fn fleet(cli: &Cli, node_b: &Path) -> Result<(), XtaskError> {
    let artifacts = format!("nats://{BUCKET}-artifacts");
    say(&format!(
        "8. A fleet needs only NATS: node B mirrors again, exporting its running fold every \
         second to the object store bucket `{BUCKET}-artifacts` (created here)."
    ));
    let mut exporter = cli.mirror_with(
        node_b,
        "b-export",
        &["--export-every", "1s", "--artifacts", &artifacts],
    )?;
    exporter.wait_for("published an artifact")?;
    show(&exporter.log_lines(&["export lease", "published an artifact"]));
    say("9. A brand-new node C starts from the newest artifact instead of relisting the bucket:");
    cli.put("after-export", "1")?;
    let node_c = cli.dir.join("node-c");
    let mut fresh = cli.mirror_with(&node_c, "c", &["--artifacts", &artifacts])?;
    fresh.wait_for("caught up")?;
    fresh.stop()?;
    exporter.stop()?;
    show(&fresh.log_lines(&["bootstrapped", "updates received"]));
    say("   Its status, with the newest artifact's age:");
    show(&cli.run(&[
        "status",
        "--store",
        path(&node_c)?,
        "--server",
        &cli.url,
        "--artifacts",
        &artifacts,
    ])?);
    Ok(())
}

fn say(text: &str) {
    println!("\n{text}");
}

fn show(text: &str) {
    for line in text.lines() {
        println!("     {line}");
    }
}

fn path(p: &Path) -> Result<&str, XtaskError> {
    p.to_str()
        .ok_or_else(|| XtaskError::Other(format!("{} is not UTF-8", p.display())))
}

fn kv<'a>(cli: &'a Cli, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["kv", "--server", cli.url.as_str(), "--bucket", BUCKET];
    all.extend_from_slice(args);
    all
}

/// The CLI binary and where the demo keeps its stores.
struct Cli {
    bin: PathBuf,
    url: String,
    dir: PathBuf,
}

impl Cli {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command.env("RUST_LOG", "info").stdin(Stdio::null());
        command
    }

    /// Run to completion; stdout, or an error carrying stderr.
    fn run(&self, args: &[&str]) -> Result<String, XtaskError> {
        let mut command = self.command();
        command.args(args);
        let output = exec::capture(&mut command)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(XtaskError::Other(format!(
                "`slipstream {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// Run, showing the command line first.
    fn echo_run(&self, args: &[&str]) -> Result<(), XtaskError> {
        println!("   $ slipstream {}", args.join(" "));
        self.run(args).map(drop)
    }

    fn put(&self, key: &str, value: &str) -> Result<(), XtaskError> {
        self.run(&kv(self, &["put", key, value])).map(drop)
    }

    /// Start `slipstream mirror` into `store`, logging to a file named
    /// after `label`.
    fn mirror(&self, store: &Path, label: &str) -> Result<Mirror, XtaskError> {
        self.mirror_with(store, label, &[])
    }

    /// [`Cli::mirror`] with more flags.
    fn mirror_with(&self, store: &Path, label: &str, extra: &[&str]) -> Result<Mirror, XtaskError> {
        let log = self.dir.join(format!("mirror-{label}.log"));
        let file = File::create(&log).map_err(|e| io_error("create", &log, &e))?;
        let args = [
            "mirror",
            "--server",
            self.url.as_str(),
            "--bucket",
            BUCKET,
            "--store",
            path(store)?,
        ];
        let shown: Vec<&str> = args.iter().chain(extra).copied().collect();
        println!("   $ slipstream {}", shown.join(" "));
        let mut command = self.command();
        command
            .args(args)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(file);
        let child = command.spawn().map_err(|e| XtaskError::Spawn {
            command: exec::render(&command),
            source: e,
        })?;
        Ok(Mirror {
            child: Some(child),
            log,
        })
    }
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> XtaskError {
    XtaskError::Other(format!("{what} {}: {e}", path.display()))
}

/// How waiting on a mirror ended.
enum Ended {
    /// The log showed the awaited line.
    Saw,
    /// The process exited first, with this code (-1 for a signal).
    Exited(i32),
}

/// A running `slipstream mirror`; killed if still running when dropped.
struct Mirror {
    child: Option<Child>,
    log: PathBuf,
}

impl Mirror {
    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The log lines containing any of `needles`.
    fn log_lines(&self, needles: &[&str]) -> String {
        self.log()
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn wait_for(&mut self, needle: &str) -> Result<(), XtaskError> {
        match self.wait_for_either(needle)? {
            Ended::Saw => Ok(()),
            Ended::Exited(code) => Err(XtaskError::Other(format!(
                "the mirror exited with {code} before `{needle}`:\n{}",
                self.log()
            ))),
        }
    }

    /// Wait until the log contains `needle` or the process exits.
    fn wait_for_either(&mut self, needle: &str) -> Result<Ended, XtaskError> {
        let deadline = Instant::now() + WITHIN;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return Ok(Ended::Saw);
            }
            if let Some(code) = self.exit_code()? {
                return Ok(Ended::Exited(code));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(XtaskError::Other(format!(
            "the mirror did not log `{needle}` within {WITHIN:?}:\n{}",
            self.log()
        )))
    }

    fn exit_code(&mut self) -> Result<Option<i32>, XtaskError> {
        let Some(child) = &mut self.child else {
            return Ok(Some(-1));
        };
        let status = child
            .try_wait()
            .map_err(|e| io_error("wait for", &self.log, &e))?;
        Ok(status.map(|s| s.code().unwrap_or(-1)))
    }

    /// SIGTERM (a graceful stop), then wait for the exit.
    fn stop(&mut self) -> Result<(), XtaskError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let mut term = Command::new("kill");
        term.args(["-TERM", &child.id().to_string()]);
        let sent = exec::capture(&mut term)?;
        if !sent.status.success() {
            return Err(XtaskError::Other(format!(
                "could not signal the mirror: {}",
                String::from_utf8_lossy(&sent.stderr).trim()
            )));
        }
        let status = child
            .wait()
            .map_err(|e| io_error("wait for", &self.log, &e))?;
        if status.success() {
            Ok(())
        } else {
            Err(XtaskError::Other(format!(
                "the mirror did not stop cleanly ({status}):\n{}",
                self.log()
            )))
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The demo's directory, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(base: &Path) -> Result<Self, XtaskError> {
        let dir = base.join(format!("run-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, &e))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A nats-server with JetStream on a free loopback port; killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(bin: &Path, dir: &Path) -> Result<Self, XtaskError> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| XtaskError::Other(format!("no free port: {e}")))?
            .port();
        let log_path = dir.join("nats-server.log");
        let log = File::create(&log_path).map_err(|e| io_error("create", &log_path, &e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| io_error("open", &log_path, &e))?;
        let mut command = Command::new(bin);
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("nats-store"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = command.spawn().map_err(|e| XtaskError::Spawn {
            command: exec::render(&command),
            source: e,
        })?;
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(XtaskError::Other(format!(
                    "nats-server did not start; see {}",
                    log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
