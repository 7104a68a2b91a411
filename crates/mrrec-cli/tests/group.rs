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
    try_scrape, wait_for_records, Running,
};
use mrrec_testkit::{free_port, Redis, Tansu};
use std::time::{Duration, Instant};

/// The consumers' session timeout in this test.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Partitions of the three topics distill consumes.
const PARTITIONS: f64 = 18.0;

/// Items + profile events + ratings of MovieLens-100K.
const ML100K_RECORDS: i64 = 1682 + 943 + 100_000;

const OFFSETS: &str = "mrrec:offsets";

/// The environment of one distill instance: its own index directory (a
/// tantivy index has one writer), the shared group and Redis.
fn instance_env(
    dir: &std::path::Path,
    brokers: &str,
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
        ("MRREC__KAFKA__BROKERS", brokers.to_owned()),
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
    // The same address after a restart.
    let brokers = tansu.bootstrap();
    let clean_redis = Redis::start().unwrap();
    let group_redis = Redis::start().unwrap();
    let data = ml100k_dir();
    run_ok(
        &["load", "ml-100k", "--data-dir", data.to_str().unwrap()],
        &instance_env(tmp.path(), &brokers, &clean_redis, "load", "load", None),
    );

    // The reference: one process, no faults.
    let mut clean = connect(&clean_redis.url()).await;
    let mut only = Running::stage(
        "distill",
        &instance_env(tmp.path(), &brokers, &clean_redis, "clean", "only", None),
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

    // Three instances in one group, each with its metrics endpoint (how the
    // test sees who owns what).
    let mut faulted = connect(&group_redis.url()).await;
    let [port_a, port_b, port_c] = [(); 3].map(|()| free_port().unwrap());
    let member = |name: &str, port: u16| {
        instance_env(
            tmp.path(),
            &brokers,
            &group_redis,
            "group",
            name,
            Some(port),
        )
    };
    let mut a = Running::stage("distill", &member("a", port_a));
    let mut b = Running::stage("distill", &member("b", port_b));
    let mut c = Running::stage("distill", &member("c", port_c));
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
    // away and comes back on the same data, and D joins.
    //
    // tansu 0.6's group coordinator needs the join: when B's session
    // expires it drops B from the members but keeps the generation's
    // assignment, so B's partitions stay assigned to nobody until a member
    // joins and the leader assigns afresh (Kafka starts that rebalance by
    // itself). And a member that died less than a session timeout before a
    // join stays in the new generation, with its partitions, for good; so
    // the join comes more than a session timeout after the kill.
    b.kill();
    let at_kill = stored_records(&mut faulted, OFFSETS).await;
    eprintln!("killed b at {at_kill} records ({:?})", started.elapsed());
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(1)).await;
    let before_outage = scrape(port_a).await;
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
    let port_d = free_port().unwrap();
    let mut d = Running::stage("distill", &member("d", port_d));
    wait_for_assignment(
        &[port_a, port_c, port_d],
        &mut [&mut a, &mut c, &mut d],
        timeout,
    )
    .await;
    eprintln!(
        "a, c and d own every partition at {} records ({:?})",
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
    let after_outage = scrape(port_a).await;
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

/// Waits until the instances on `ports` together own every partition, each
/// at least one (`mrrec_assigned_partitions`), asserting that they stay up.
async fn wait_for_assignment(ports: &[u16], running: &mut [&mut Running], timeout: Duration) {
    let start = Instant::now();
    loop {
        let mut owned = Vec::new();
        for port in ports {
            // A process still starting has no endpoint yet: it owns nothing.
            let page = try_scrape(*port).await.unwrap_or_default();
            owned.push(counter(&page, "mrrec_assigned_partitions"));
        }
        if owned.iter().sum::<f64>() == PARTITIONS && owned.iter().all(|n| *n > 0.0) {
            eprintln!(
                "partitions owned: {owned:?} ({:?} after the wait began)",
                start.elapsed()
            );
            return;
        }
        for r in running.iter_mut() {
            r.assert_alive("a group member");
        }
        assert!(
            start.elapsed() < timeout,
            "the group did not settle in {timeout:?}: partitions owned {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
