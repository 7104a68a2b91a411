//! What the process-level tests share: running the `mrrec` binary as an
//! operator would (isolated from the caller's environment), a handle on a
//! running stage process, Redis dumps for whole-keyspace comparisons, and
//! seeded kill points. Each test binary uses a part of it.
#![allow(dead_code)]

use redis::AsyncCommands;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// MovieLens-100K beside the repository (never copied into it).
pub fn ml100k_dir() -> PathBuf {
    let dir = repo().join("../shared/data/ml-100k");
    assert!(
        dir.join("u.data").is_file(),
        "MovieLens-100K is expected at {} (../shared/data/ml-100k beside the repository)",
        dir.display()
    );
    dir
}

/// `mrrec args` with `env` on top of a clean environment, metrics off.
pub fn mrrec(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut command = mrrec_testkit::isolated_mrrec(env!("CARGO_BIN_EXE_mrrec"));
    command
        .args(args)
        .env("MRREC__METRICS__LISTEN", "")
        // MRREC_TEST_CHILD_LOG=info (say) shows more of a failing run.
        .env(
            "RUST_LOG",
            std::env::var("MRREC_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        );
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Runs `mrrec args` to completion; panics with its stderr unless it succeeded.
pub fn run_ok(args: &[&str], env: &[(&str, String)]) -> String {
    let output = mrrec(args, env).output().unwrap();
    assert!(
        output.status.success(),
        "mrrec {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `mrrec load jsonl` of `items` and `events` (JSON lines files).
pub fn load_jsonl(items: &Path, events: &Path, env: &[(&str, String)]) {
    run_ok(
        &[
            "load",
            "jsonl",
            "--items",
            items.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ],
        env,
    );
}

/// One JSON document per line.
pub fn write_lines<T: serde::Serialize>(path: &Path, rows: &[T]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for row in rows {
        serde_json::to_writer(&mut file, row).unwrap();
        file.write_all(b"\n").unwrap();
    }
}

/// A running `mrrec` whose stderr is collected (and echoed); SIGKILLed if
/// the test fails before it is stopped.
pub struct Running {
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    pub fn start(args: &[&str], env: &[(&str, String)]) -> Running {
        let mut child = mrrec(args, env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[child] {line}");
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Running { child, stderr }
    }

    /// `mrrec run --stage name`.
    pub fn stage(name: &str, env: &[(&str, String)]) -> Running {
        Self::start(&["run", "--stage", name], env)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn assert_alive(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{what} exited early ({status}):\n{}", self.stderr());
        }
    }

    /// SIGKILL: no chance to flush, commit or drain.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (up to `limit`) for the process to exit by itself, which must
    /// be a success; returns stderr.
    pub fn finish(mut self, what: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not finish in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_millis(200));
        let stderr = self.stderr();
        assert!(status.success(), "{what}: {status}\n{stderr}");
        stderr
    }

    /// SIGTERM, then the exit status must be success; returns stderr.
    pub fn terminate(mut self, what: &str) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{what} did not drain in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_millis(200));
        let stderr = self.stderr();
        assert!(status.success(), "{what}: {status}\n{stderr}");
        stderr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn connect(url: &str) -> redis::aio::ConnectionManager {
    redis::Client::open(url)
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap()
}

/// Records a stage's state reflects: the sum over the stored offsets
/// (`offsets_key`, field per topic and partition) of offset + 1.
pub async fn stored_records(redis: &mut redis::aio::ConnectionManager, offsets_key: &str) -> i64 {
    let offsets: BTreeMap<String, i64> = redis.hgetall(offsets_key).await.unwrap_or_default();
    offsets.values().map(|o| o + 1).sum()
}

/// Waits until the stored offsets cover `at_least` records, asserting that
/// every process in `running` stays up meanwhile.
pub async fn wait_for_records(
    redis: &mut redis::aio::ConnectionManager,
    offsets_key: &str,
    at_least: i64,
    running: &mut [&mut Running],
    timeout: Duration,
) {
    let start = Instant::now();
    while stored_records(redis, offsets_key).await < at_least {
        for r in running.iter_mut() {
            r.assert_alive("a stage");
        }
        assert!(
            start.elapsed() < timeout,
            "{offsets_key} reached {} of {at_least} records in {timeout:?}",
            stored_records(redis, offsets_key).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every hash in Redis, field by field (the stages keep only hashes).
pub async fn dump(
    redis: &mut redis::aio::ConnectionManager,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let keys: Vec<String> = redis.keys("*").await.unwrap();
    let mut out = BTreeMap::new();
    for key in keys {
        let fields: BTreeMap<String, String> = redis.hgetall(&key).await.unwrap();
        out.insert(key, fields);
    }
    out
}

/// Asserts two dumps are equal, naming the first key that differs.
pub fn assert_same_keyspace(
    clean: &BTreeMap<String, BTreeMap<String, String>>,
    faulted: &BTreeMap<String, BTreeMap<String, String>>,
    fault: &str,
) {
    for (key, fields) in clean {
        assert_eq!(
            Some(fields),
            faulted.get(key),
            "{key} differs after {fault}"
        );
    }
    let extra: Vec<&String> = faulted.keys().filter(|k| !clean.contains_key(*k)).collect();
    assert!(extra.is_empty(), "keys only after {fault}: {extra:?}");
}

/// `n` increasing fractions of a load in (0.05, 0.95) at which a test
/// kills a process, from `MRREC_CHAOS_SEED` (default 2026).
pub fn kill_points(n: usize) -> Vec<f64> {
    let mut state: u64 = std::env::var("MRREC_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026)
        | 1;
    let mut points: Vec<f64> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            0.05 + 0.9 * ((state >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect();
    points.sort_by(f64::total_cmp);
    eprintln!("kill points: {points:.3?} of the load");
    points
}

/// A metric's value in a Prometheus scrape, summed over its label sets
/// (0 when it is absent).
pub fn counter(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// `GET /metrics` of a process whose `metrics.listen` is 127.0.0.1:`port`.
pub async fn scrape(port: u16) -> String {
    try_scrape(port)
        .await
        .unwrap_or_else(|| panic!("no metrics on 127.0.0.1:{port}"))
}

/// [`scrape`], or `None` while nothing answers there (a process starting).
pub async fn try_scrape(port: u16) -> Option<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?;
    response.text().await.ok()
}
