//! Real servers for integration tests: a tansu broker and a Redis server, each
//! started on a free loopback port and stopped (killed) when dropped.
//!
//! Binaries are found on `PATH` (or `~/.cargo/bin` for tansu), or at
//! `MRREC_TANSU_BIN` / `MRREC_REDIS_BIN`. A missing binary is an error that says
//! how to install it: integration tests fail rather than silently skip.

pub mod replay;

use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; tiny race, fine for tests).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(listener.local_addr()?.port())
}

/// A command for the `mrrec` binary at `bin` that sees only the configuration
/// a test gives it: the caller's `MRREC_CONFIG` and `MRREC__…` variables are removed.
pub fn isolated_mrrec(bin: &str) -> Command {
    let mut command = Command::new(bin);
    command.env_remove("MRREC_CONFIG");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MRREC__")) {
        command.env_remove(key);
    }
    command
}

fn find_binary(env: &str, name: &str, install_hint: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string())
    }) {
        candidates.push(PathBuf::from(home).join("bin").join(name));
    }
    candidates.push(PathBuf::from("/usr/bin").join(name));
    candidates.push(PathBuf::from("/usr/sbin").join(name));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` not found (set {env} or install it: {install_hint})"))
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening on {port}");
        }
        if start.elapsed() > timeout {
            bail!("{what} did not listen on {port} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How tansu stores data.
#[derive(Debug, Clone)]
pub enum TansuStorage {
    /// In memory: fastest, lost on exit.
    Memory,
    /// SQLite file under this directory: survives a broker restart.
    Sqlite(PathBuf),
}

static NEXT_DIR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A running tansu broker.
pub struct Tansu {
    child: Child,
    port: u16,
    storage: TansuStorage,
    /// A temporary data directory this handle created and removes.
    owned_dir: Option<PathBuf>,
}

impl Tansu {
    /// Starts a broker on a free port, storing into SQLite in a fresh temporary
    /// directory (removed on drop).
    ///
    /// Not the memory engine: tansu 0.6.0's memory (dynostore) engine answers a
    /// fetch from an offset inside a producer batch with only the *later*
    /// batches, so a consumer resuming from a committed offset mid-batch silently
    /// skips records (or stalls on the last batch). The SQLite engine stores
    /// records one by one and resumes exactly.
    pub fn start() -> Result<Tansu> {
        let dir = std::env::temp_dir().join(format!(
            "mrrec-tansu-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut tansu = Self::start_with(TansuStorage::Sqlite(dir.clone()), None)?;
        tansu.owned_dir = Some(dir);
        Ok(tansu)
    }

    /// Starts a broker with `storage`, on `port` (or a free one).
    pub fn start_with(storage: TansuStorage, port: Option<u16>) -> Result<Tansu> {
        let bin = find_binary(
            "MRREC_TANSU_BIN",
            "tansu",
            "cargo install tansu --version 0.6.0 --locked --features libsql,dynostore",
        )?;
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let (engine, workdir) = match &storage {
            TansuStorage::Memory => ("memory://tansu/", std::env::temp_dir()),
            TansuStorage::Sqlite(dir) => {
                std::fs::create_dir_all(dir)?;
                // tansu resolves the path relative to its working directory.
                ("sqlite://tansu.db", dir.clone())
            }
        };
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(&bin);
        command
            .current_dir(&workdir)
            .args(["broker", "--storage-engine", engine])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env_remove("CLUSTER_ID")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env(
                "RUST_LOG",
                std::env::var("MRREC_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("MRREC_TANSU_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        wait_for_port(port, &mut child, "tansu", Duration::from_secs(30))?;
        tracing::info!(port, ?storage, "tansu started");
        Ok(Tansu {
            child,
            port,
            storage,
            owned_dir: None,
        })
    }

    /// `127.0.0.1:PORT`, for `kafka.brokers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the broker and starts it again on the same port and storage.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let mut fresh = Self::start_with(self.storage.clone(), Some(self.port))?;
        fresh.owned_dir = self.owned_dir.take();
        drop(std::mem::replace(self, fresh));
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.owned_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A running Redis server: no persistence, or an append-only file that fsyncs
/// every write (so a kill loses nothing that was acknowledged).
pub struct Redis {
    child: Child,
    port: u16,
    aof_dir: Option<PathBuf>,
    /// `rediss://:PASSWORD@` instead of `redis://` when set.
    tls: Option<RedisTls>,
}

/// A TLS-only Redis that requires a password (see [`Redis::start_tls`]).
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// The CA that signed the server's certificate (PEM).
    pub ca_file: PathBuf,
    pub password: String,
}

impl Redis {
    /// An in-memory Redis on a free port.
    pub fn start() -> Result<Redis> {
        Self::spawn(None, None)
    }

    /// A Redis persisting to an append-only file in `dir` (fsync always).
    pub fn start_persistent(dir: &std::path::Path) -> Result<Redis> {
        std::fs::create_dir_all(dir)?;
        Self::spawn(None, Some(dir.to_path_buf()))
    }

    fn spawn(port: Option<u16>, aof_dir: Option<PathBuf>) -> Result<Redis> {
        let bin = find_binary(
            "MRREC_REDIS_BIN",
            "redis-server",
            "apt-get install redis-server",
        )?;
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut command = Command::new(&bin);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"]);
        match &aof_dir {
            Some(dir) => {
                command.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"]);
                command.arg(dir);
            }
            None => {
                command.args(["--appendonly", "no"]);
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        wait_for_port(port, &mut child, "redis-server", Duration::from_secs(15))?;
        tracing::info!(port, "redis started");
        Ok(Redis {
            child,
            port,
            aof_dir,
            tls: None,
        })
    }

    /// A Redis that speaks only TLS (certificate for 127.0.0.1, signed by a
    /// CA made here with `openssl` into `dir`) and requires `password`.
    pub fn start_tls(dir: &std::path::Path, password: &str) -> Result<Redis> {
        std::fs::create_dir_all(dir)?;
        let openssl = |args: &[&str]| -> Result<()> {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .context("running openssl (Debian: apt-get install openssl)")?;
            if !output.status.success() {
                bail!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            Ok(())
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=mrrec test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ])?;
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ])?;
        let bin = find_binary(
            "MRREC_REDIS_BIN",
            "redis-server",
            "apt-get install redis-server",
        )?;
        let port = free_port()?;
        let mut child = Command::new(&bin)
            .current_dir(dir)
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
            .args(["--requirepass", password, "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        wait_for_port(
            port,
            &mut child,
            "redis-server (TLS)",
            Duration::from_secs(15),
        )?;
        Ok(Redis {
            child,
            port,
            aof_dir: None,
            tls: Some(RedisTls {
                ca_file: dir.join("ca.pem"),
                password: password.to_owned(),
            }),
        })
    }

    /// `redis://127.0.0.1:PORT/0` (or `rediss://:PASSWORD@…` for a TLS
    /// server), for `store.url`.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(tls) => format!("rediss://:{}@127.0.0.1:{}/0", tls.password, self.port),
        }
    }

    /// The TLS settings of a [`Redis::start_tls`] server.
    pub fn tls(&self) -> Option<&RedisTls> {
        self.tls.as_ref()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL); [`Redis::start_again`] brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port (and append-only file).
    pub fn start_again(&mut self) -> Result<()> {
        self.kill();
        anyhow::ensure!(
            self.tls.is_none(),
            "restarting a TLS Redis is not supported"
        );
        let fresh = Self::spawn(Some(self.port), self.aof_dir.clone())?;
        drop(std::mem::replace(self, fresh));
        Ok(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
