//! Partition-aligned memory shards as an operator runs them, against a real
//! broker (tansu) and a real Redis: two `mrrec run --stage recommend`
//! processes with `recommend.memory_index = "partitions"` in one group. The
//! first owns every requests partition and indexes every user's memory from
//! the store; when the second joins, the group rebalances, each rebuilds its
//! shard for the partitions it now owns (disjoint, together all of them,
//! together every user), and every user's request is answered, before and
//! after, with memory that is that user's own and in the store. Distill
//! keeps running meanwhile; recommend never opens distill's memory index.

mod common;

use common::{
    connect, counter, load_jsonl, run_ok, scrape, wait_for_records, write_lines, Running,
};
use mrrec_testkit::{free_port, Redis, Tansu};
use redis::AsyncCommands;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// `partitions=[…]` and `users=N` of every "memory shard rebuilt" line.
fn shard_lines(stderr: &str) -> Vec<(BTreeSet<i32>, usize)> {
    let mut plain = String::with_capacity(stderr.len());
    let mut chars = stderr.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI colour sequence: ESC [ … m.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("memory shard rebuilt"))
        .map(|line| {
            let partitions = line
                .split_once("partitions=[")
                .and_then(|(_, rest)| rest.split_once(']'))
                .map(|(list, _)| {
                    list.split(',')
                        .filter_map(|p| p.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            let users = line
                .split_once("users=")
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            (partitions, users)
        })
        .collect()
}

/// Asks every user once; each answer must be an answer (no error, k items)
/// whose retrieved memory is the user's own, as stored.
async fn ask_everyone(
    client: &mrrec_recommend::RecommendClient,
    redis: &mut redis::aio::ConnectionManager,
    users: &[String],
    round: &str,
) -> usize {
    let mut with_memory = 0;
    for (i, user) in users.iter().enumerate() {
        let request = mrrec_messages::Request {
            request_id: format!("{round}-{i}"),
            user_id: user.clone(),
            query: Some("something I would like".into()),
            k: 5,
            exclude_seen: true,
            ts: mrrec_stream::now_ms(),
        };
        let response = client
            .ask(&request, Duration::from_secs(120))
            .await
            .unwrap()
            .response;
        assert_eq!(response.error, None, "{round} {user}: {response:?}");
        assert_eq!(response.items.len(), 5, "{round} {user}: {response:?}");
        let stored: BTreeMap<String, String> = redis
            .hgetall(format!("mrrec:user:{}", mrrec_store::escape(user)))
            .await
            .unwrap();
        let retrieved: Vec<&String> = response
            .steps
            .iter()
            .filter(|s| s.kind == mrrec_messages::StepKind::Memory)
            .flat_map(|s| &s.memory_ids)
            .collect();
        for id in &retrieved {
            assert!(
                stored.contains_key(&format!("e:{id}")),
                "{round} {user}: memory {id} is not this user's"
            );
        }
        with_memory += usize::from(!retrieved.is_empty());
    }
    with_memory
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_recommend_instances_split_memory_by_partition_and_answer_everyone() {
    let tansu = Tansu::start().unwrap();
    let redis_server = Redis::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let env: Vec<(&str, String)> = vec![
        ("MRREC__KAFKA__BROKERS", tansu.bootstrap()),
        ("MRREC__KAFKA__GROUP_PREFIX", "shards-".into()),
        (
            "MRREC__KAFKA__PROPERTIES__SESSION.TIMEOUT.MS",
            "6000".into(),
        ),
        ("MRREC__STORE__BACKEND", "redis".into()),
        ("MRREC__STORE__URL", redis_server.url()),
        (
            "MRREC__INDEX__PATH",
            tmp.path().join("index").display().to_string(),
        ),
        (
            "MRREC__POLICY__DIR",
            tmp.path().join("policy").display().to_string(),
        ),
        ("MRREC__RECOMMEND__MEMORY_INDEX", "partitions".into()),
        ("MRREC__RECOMMEND__TIMEOUT_MS", "30000".into()),
    ];
    let world = mrrec_datasets::synthetic::world(
        11,
        mrrec_datasets::synthetic::WorldSize {
            items: 120,
            users: 40,
            ratings_per_user: 12,
        },
    );
    let items = tmp.path().join("items.jsonl");
    let events = tmp.path().join("events.jsonl");
    write_lines(&items, &world.items);
    write_lines(&events, &world.events);
    let users: Vec<String> = world
        .events
        .iter()
        .map(|e| e.user_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    run_ok(&["topics", "create"], &env);
    load_jsonl(&items, &events, &env);
    let mut redis = connect(&redis_server.url()).await;
    let mut distill = Running::stage("distill", &env);
    wait_for_records(
        &mut redis,
        "mrrec:offsets",
        (world.items.len() + world.events.len()) as i64,
        &mut [&mut distill],
        Duration::from_secs(120),
    )
    .await;
    run_ok(
        &[
            "model",
            "init",
            "--out",
            tmp.path().join("policy/v0000").to_str().unwrap(),
            "--catalog",
            items.to_str().unwrap(),
        ],
        &[],
    );

    let mut recommend_env = env.clone();
    recommend_env.push(("RUST_LOG", "warn,mrrec_recommend=info".into()));
    let with_metrics = |port: u16| {
        let mut env = recommend_env.clone();
        env.push(("MRREC__METRICS__LISTEN", format!("127.0.0.1:{port}")));
        env
    };
    let (metrics_a, metrics_b) = (free_port().unwrap(), free_port().unwrap());
    let mut a = Running::stage("recommend", &with_metrics(metrics_a));
    let deadline = Instant::now() + Duration::from_secs(120);
    while shard_lines(&a.stderr()).is_empty() {
        a.assert_alive("recommend a");
        assert!(Instant::now() < deadline, "a never built its shard");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let alone = shard_lines(&a.stderr()).pop().unwrap();
    assert_eq!(alone.0, (0..6).collect(), "a alone owns every partition");
    assert_eq!(alone.1, users.len(), "a alone indexes every user");

    let clients = mrrec_stream::KafkaClients::new(&tansu.bootstrap(), &BTreeMap::new());
    let client = mrrec_recommend::RecommendClient::connect(&clients, "mrrec.")
        .await
        .unwrap();
    let before = ask_everyone(&client, &mut redis, &users, "alone").await;

    // b joins: the group rebalances and each rebuilds its shard.
    let mut b = Running::stage("recommend", &with_metrics(metrics_b));
    let deadline = Instant::now() + Duration::from_secs(120);
    let (shard_a, shard_b) = loop {
        a.assert_alive("recommend a");
        b.assert_alive("recommend b");
        let (lines_a, lines_b) = (shard_lines(&a.stderr()), shard_lines(&b.stderr()));
        if lines_a.len() >= 2 && !lines_b.is_empty() {
            let (last_a, last_b) = (lines_a.last().unwrap(), lines_b.last().unwrap());
            if !last_a.0.is_empty() && !last_b.0.is_empty() {
                break (last_a.clone(), last_b.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no rebalance into two shards:\na: {lines_a:?}\nb: {lines_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        shard_a.0.is_disjoint(&shard_b.0),
        "{shard_a:?} / {shard_b:?}"
    );
    assert_eq!(
        shard_a
            .0
            .union(&shard_b.0)
            .copied()
            .collect::<BTreeSet<_>>(),
        (0..6).collect(),
        "together they own every partition"
    );
    assert_eq!(shard_a.1 + shard_b.1, users.len(), "and index every user");
    assert!(shard_a.1 > 0 && shard_b.1 > 0, "{shard_a:?} / {shard_b:?}");

    let after = ask_everyone(&client, &mut redis, &users, "split").await;
    eprintln!(
        "shards: a {:?} ({} users), b {:?} ({} users); answers with memory: {before}/{} before, {after}/{} after",
        shard_a.0,
        shard_a.1,
        shard_b.0,
        shard_b.1,
        users.len(),
        users.len()
    );
    assert!(
        after > 0,
        "no answer after the rebalance retrieved any memory"
    );
    // Every request reached the instance whose shard holds its user (our
    // producer's partitioner is the murmur2 the shards assume), and no
    // shard had to load a user on demand: the rebuilds on assignment held
    // every user's memory as stored (distill is idle by now).
    for (name, port) in [("a", metrics_a), ("b", metrics_b)] {
        let metrics = scrape(port).await;
        assert!(
            metrics.contains("mrrec_recommend_shard_users"),
            "{name} exports no shard metrics:\n{metrics}"
        );
        assert_eq!(
            counter(&metrics, "mrrec_recommend_shard_misrouted_total"),
            0.0,
            "{name}: a request reached an instance that does not own its user"
        );
        assert_eq!(
            counter(&metrics, "mrrec_recommend_shard_refreshed_total"),
            0.0,
            "{name}: a user's memory was missing from its shard"
        );
        assert!(
            counter(&metrics, "mrrec_recommend_requests_total") > 0.0,
            "{name}"
        );
        // The stage's own metrics carry HELP text and the stage label.
        for metric in [
            "mrrec_recommend_requests_total",
            "mrrec_recommend_shard_users",
            "mrrec_recommend_latency_seconds",
        ] {
            assert!(
                metrics.contains(&format!("# HELP {metric} ")),
                "{name}: {metric} has no HELP line:\n{metrics}"
            );
        }
        assert!(
            metrics.contains("mrrec_recommend_shard_users{stage=\"recommend\"}"),
            "{name}: the shard gauge has no stage label:\n{metrics}"
        );
    }
    a.terminate("recommend a");
    b.terminate("recommend b");
    distill.terminate("distill");
}
