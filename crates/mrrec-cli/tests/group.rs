//! Distill as a consumer group under faults, against a real broker (tansu,
//! SQLite storage) and a real Redis: MovieLens-100K streams into three
//! `mrrec run --stage distill` processes in one group (6 partitions per
//! topic); one is SIGKILLed mid-stream, the broker itself is killed and
//! restarted on the same data directory, and another instance is added.
//! The final
//! Redis keyspace must equal a clean single-process run's, key by key and
//! field by field (so every partition was consumed to its end, nothing was
//! lost and nothing applied twice), and the survivors' metrics must show
//! the outage.

mod common;

use common::{
    assert_same_keyspace, connect, counter, dump, ml100k_dir, run_ok, scrape, stored_records,
    wait_for_records, Running,
};
use mrrec_testkit::{free_port, Redis, Tansu};
use std::time::{Duration, Instant};

/// The consumers' session timeout in this test.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Items + profile events + ratings of MovieLens-100K.
const ML100K_RECORDS: i64 = 1682 + 943 + 100_000;

const OFFSETS: &str = "mrrec:offsets";

/// The environment of one distill instance: its own index directory (a
/// tantivy index has one writer), the shared group and Redis.
fn instance_env(
    dir: &std::path::Path,
    tansu: &Tansu,
    redis: &Redis,
    group: &str,
    instance: &str,
    metrics_port: Option<u16>,
) -> Vec<(&'static str, String)> {
    let local = dir.join(format!("{group}-{instance}"));
    let mut env = vec![
        (
            "MRREC__INDEX__PATH",
            local.join("index").display().to_string(),
        ),
        ("MRREC__KAFKA__BROKERS", tansu.bootstrap()),
        ("MRREC__KAFKA__GROUP_PREFIX", format!("{group}-")),
        (
            "MRREC__KAFKA__PROPERTIES__SESSION.TIMEOUT.MS",
            SESSION_TIMEOUT.as_millis().to_string(),
        ),
        ("MRREC__STORE__BACKEND", "redis".into()),
        ("MRREC__STORE__URL", redis.url()),
        // Small batches: many more store writes to interleave across
        // instances, and a stream that is still flowing when faults hit.
        ("MRREC__DISTILL__BATCH_MAX_RECORDS", "300".into()),
    ];
    if let Some(port) = metrics_port {
        env.push(("MRREC__METRICS__LISTEN", format!("127.0.0.1:{port}")));
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_a_kill_an_add_and_a_broker_restart_change_nothing() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut tansu = Tansu::start().unwrap();
    let clean_redis = Redis::start().unwrap();
    let group_redis = Redis::start().unwrap();
    let data = ml100k_dir();
    run_ok(
        &["load", "ml-100k", "--data-dir", data.to_str().unwrap()],
        &instance_env(tmp.path(), &tansu, &clean_redis, "load", "load", None),
    );

    // The reference: one process, no faults.
    let mut clean = connect(&clean_redis.url()).await;
    let mut only = Running::stage(
        "distill",
        &instance_env(tmp.path(), &tansu, &clean_redis, "clean", "only", None),
    );
    wait_for_records(
        &mut clean,
        OFFSETS,
        ML100K_RECORDS,
        &mut [&mut only],
        Duration::from_secs(240),
    )
    .await;
    only.terminate("clean distill");
    let clean_dump = dump(&mut clean).await;
    eprintln!("clean run done at {:?}", started.elapsed());

    // Three instances in one group.
    let mut faulted = connect(&group_redis.url()).await;
    let metrics_a = free_port().unwrap();
    let env_a = instance_env(
        tmp.path(),
        &tansu,
        &group_redis,
        "group",
        "a",
        Some(metrics_a),
    );
    let mut a = Running::stage("distill", &env_a);
    let mut b = Running::stage(
        "distill",
        &instance_env(tmp.path(), &tansu, &group_redis, "group", "b", None),
    );
    let mut c = Running::stage(
        "distill",
        &instance_env(tmp.path(), &tansu, &group_redis, "group", "c", None),
    );
    let at = |fraction: f64| (ML100K_RECORDS as f64 * fraction) as i64;
    let timeout = Duration::from_secs(240);
    wait_for_records(
        &mut faulted,
        OFFSETS,
        at(0.2),
        &mut [&mut a, &mut b, &mut c],
        timeout,
    )
    .await;

    // B dies without a word. Once its session has timed out the broker goes
    // away and comes back on the same data; A and C rejoin, and the group
    // hands B's partitions out. (tansu 0.6 keeps a member that died less
    // than a session timeout before a join in the new generation, with its
    // partitions, and never expires it afterwards; Kafka evicts it. So every
    // join here comes more than a session timeout after the kill.)
    b.kill();
    eprintln!(
        "killed b at {} records ({:?})",
        stored_records(&mut faulted, OFFSETS).await,
        started.elapsed()
    );
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(1)).await;
    let before_outage = scrape(metrics_a).await;
    let at_outage = stored_records(&mut faulted, OFFSETS).await;
    tansu.restart().unwrap();
    eprintln!(
        "broker restarted at {at_outage} records ({:?})",
        started.elapsed()
    );
    assert!(
        at_outage < ML100K_RECORDS,
        "the stream was over before the broker restart"
    );
    // D joins once the survivors are consuming again.
    wait_for_records(
        &mut faulted,
        OFFSETS,
        at_outage + 1,
        &mut [&mut a, &mut c],
        timeout,
    )
    .await;
    let mut d = Running::stage(
        "distill",
        &instance_env(tmp.path(), &tansu, &group_redis, "group", "d", None),
    );
    eprintln!(
        "added d at {} records ({:?})",
        stored_records(&mut faulted, OFFSETS).await,
        started.elapsed()
    );
    wait_for_records(
        &mut faulted,
        OFFSETS,
        ML100K_RECORDS,
        &mut [&mut a, &mut c, &mut d],
        timeout,
    )
    .await;
    let after_outage = scrape(metrics_a).await;
    for running in [a, c, d] {
        running.terminate("a group member");
    }
    eprintln!("group run done at {:?}", started.elapsed());

    let faulted_dump = dump(&mut faulted).await;
    let users = clean_dump
        .keys()
        .filter(|k| k.starts_with("mrrec:user:"))
        .count();
    assert_eq!(users, 943, "every user of u.user has memory");
    assert_same_keyspace(
        &clean_dump,
        &faulted_dump,
        "a kill, an add and a broker restart",
    );

    // The outage is visible: the Kafka client reported errors or the
    // runner backed off and retried while the broker was gone.
    let seen = |name: &str| counter(&after_outage, name) - counter(&before_outage, name);
    let (errors, retries, commit_failures) = (
        seen("mrrec_kafka_errors_total"),
        seen("mrrec_retries_total"),
        seen("mrrec_commit_failures_total"),
    );
    eprintln!(
        "during the outage: kafka errors +{errors}, retries +{retries}, commit failures +{commit_failures}"
    );
    assert!(
        errors + retries + commit_failures > 0.0,
        "the broker restart left no trace in the metrics:\n{after_outage}"
    );
}
