//! The distill stage as an operator runs it: MovieLens-100K loaded into a real
//! broker (tansu), `mrrec run --stage distill` into a real Redis. Every user
//! gets a profile; and a run SIGKILLed three times mid-stream and restarted
//! leaves exactly the Redis a clean run leaves (same keys, same values).

use mrrec_testkit::{Redis, Tansu};
use redis::AsyncCommands;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The consumers' session timeout in this test.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Items + profile events + ratings of MovieLens-100K.
const ML100K_RECORDS: i64 = 1682 + 943 + 100_000;

fn ml100k_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ml-100k");
    assert!(
        dir.join("u.data").is_file(),
        "MovieLens-100K is expected at {} (../shared/data/ml-100k beside the repository)",
        dir.display()
    );
    dir
}

fn mrrec(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut command = mrrec_testkit::isolated_mrrec(env!("CARGO_BIN_EXE_mrrec"));
    command
        .args(args)
        .env("MRREC__METRICS__LISTEN", "")
        .env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

fn env(tansu: &Tansu, redis: &Redis, group: &str) -> Vec<(&'static str, String)> {
    let local =
        std::env::temp_dir().join(format!("mrrec-distill-test-{}-{group}", std::process::id()));
    vec![
        (
            "MRREC__INDEX__PATH",
            local.join("index").display().to_string(),
        ),
        (
            "MRREC__STORE__PATH",
            local.join("store").display().to_string(),
        ),
        ("MRREC__KAFKA__BROKERS", tansu.bootstrap()),
        ("MRREC__KAFKA__GROUP_PREFIX", format!("{group}-")),
        ("MRREC__STORE__BACKEND", "redis".into()),
        (
            "MRREC__KAFKA__PROPERTIES__SESSION.TIMEOUT.MS",
            SESSION_TIMEOUT.as_millis().to_string(),
        ),
        ("MRREC__STORE__URL", redis.url()),
    ]
}

async fn stored_records(redis: &mut redis::aio::ConnectionManager) -> i64 {
    let offsets: BTreeMap<String, i64> = redis.hgetall("mrrec:offsets").await.unwrap_or_default();
    offsets.values().map(|o| o + 1).sum()
}

async fn wait_until(redis: &mut redis::aio::ConnectionManager, at_least: i64, child: &mut Child) {
    let start = Instant::now();
    while stored_records(redis).await < at_least {
        assert!(child.try_wait().unwrap().is_none(), "distill exited early");
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "distill too slow"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A distill process, SIGKILLed if the test fails before it ends it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn distill(env: &[(&str, String)]) -> Running {
    Running(
        mrrec(&["run", "--stage", "distill"], env)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn terminate(mut running: Running) {
    let child = &mut running.0;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM drains and exits 0: {status}");
}

async fn dump(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movielens_into_memory_and_sigkill_changes_nothing() {
    let tansu = Tansu::start().unwrap();
    let clean_redis = Redis::start().unwrap();
    let killed_redis = Redis::start().unwrap();
    let data = ml100k_dir();

    let loaded = mrrec(
        &["load", "ml-100k", "--data-dir", data.to_str().unwrap()],
        &env(&tansu, &clean_redis, "load"),
    )
    .output()
    .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );

    // A clean run.
    let mut clean = redis::Client::open(clean_redis.url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let clean_env = env(&tansu, &clean_redis, "clean");
    let mut child = distill(&clean_env);
    wait_until(&mut clean, ML100K_RECORDS, &mut child.0).await;
    terminate(child);

    // A run killed at three points (fixed fractions: reproducible) and restarted.
    let mut killed = redis::Client::open(killed_redis.url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let killed_env = env(&tansu, &killed_redis, "killed");
    for fraction in [0.17, 0.52, 0.83] {
        let mut child = distill(&killed_env);
        wait_until(
            &mut killed,
            (ML100K_RECORDS as f64 * fraction) as i64,
            &mut child.0,
        )
        .await;
        drop(child); // SIGKILL
                     // tansu 0.6 keeps a member that died less than a session timeout before
                     // a new one joins in the new generation (with its partitions) and never
                     // expires it afterwards; Kafka does. Restart after the session timeout.
        tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(1)).await;
    }
    let mut child = distill(&killed_env);
    wait_until(&mut killed, ML100K_RECORDS, &mut child.0).await;
    terminate(child);

    let clean_dump = dump(&mut clean).await;
    let killed_dump = dump(&mut killed).await;
    let users = clean_dump
        .keys()
        .filter(|k| k.starts_with("mrrec:user:"))
        .count();
    assert_eq!(users, 943, "every user of u.user has memory");
    for (key, fields) in clean_dump
        .iter()
        .filter(|(k, _)| k.starts_with("mrrec:user:"))
    {
        assert!(
            fields.keys().any(|f| f.starts_with("e:u")),
            "{key} has a profile entry"
        );
    }
    assert_eq!(clean_dump.len(), killed_dump.len(), "same keys");
    for (key, fields) in &clean_dump {
        assert_eq!(
            Some(fields),
            killed_dump.get(key),
            "{key} differs after SIGKILL and restart"
        );
    }

    // What an operator sees for user 1: three levels, real genres.
    let shown = mrrec(&["memory", "show", "--user", "1"], &clean_env)
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("level 3 · profile (1 entries)"), "{text}");
    assert!(text.contains("level 2 · preference (18 entries)"), "{text}");
    assert!(text.contains("level 1 · behavior (273 entries)"), "{text}");
    assert!(
        text.contains("Comedy:") && text.contains("occupation technician"),
        "{text}"
    );
}
