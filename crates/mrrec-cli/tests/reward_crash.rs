//! The reward stage's join state under SIGKILL, against a real broker
//! (tansu) and a real Redis. 20,000 trajectories (5,000 requests in groups
//! of 4) and their outcomes (targets, duplicates, negatives, outcomes of
//! requests nobody logged) stream into `mrrec run --stage reward`; one run
//! is clean, the other is SIGKILLed at ten seeded points and restarted each
//! time. Afterwards the whole Redis keyspace (memory, join entries, expiry
//! buckets, stored offsets) is identical, and so is the set of rewards:
//! exactly one per trajectory of a request with a target, with the same
//! target, rank and value. A replay after a kill may publish a reward again
//! (rewards are published before the state that records them); the copies
//! are identical and counted, and the trainer keeps one per trajectory id.

mod common;

use common::{
    assert_same_keyspace, connect, dump, kill_points, load_jsonl, run_ok, stored_records,
    wait_for_records, write_lines, Running,
};
use mrrec_datasets::synthetic::{Rng, WorldSize};
use mrrec_messages::{Event, EventKind, Outcome, Reward, Segment, SegmentSource, Trajectory};
use mrrec_testkit::{Redis, Tansu};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
const REQUESTS: usize = 5_000;
const GROUP: u32 = 4;
const OFFSETS: &str = "mrrec:reward:offsets";
/// Every event time falls in one window bucket, so expiry never depends on
/// how the two topics interleave.
const BASE_TS: i64 = 472_222 * 3_600_000 + 60_000;

fn run_env(tansu: &Tansu, redis: &Redis, run: &str, dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("MRREC__TOPICS__PREFIX", format!("{run}.")),
        ("MRREC__KAFKA__BROKERS", tansu.bootstrap()),
        ("MRREC__KAFKA__GROUP_PREFIX", format!("{run}-")),
        (
            "MRREC__KAFKA__PROPERTIES__SESSION.TIMEOUT.MS",
            SESSION_TIMEOUT.as_millis().to_string(),
        ),
        ("MRREC__STORE__BACKEND", "redis".into()),
        ("MRREC__STORE__URL", redis.url()),
        (
            "MRREC__INDEX__PATH",
            dir.join(run).join("index").display().to_string(),
        ),
    ]
}

/// The reward stage's input: trajectories and outcomes, and how many
/// rewards a correct join emits.
struct Input {
    trajectories: Vec<Trajectory>,
    outcomes: Vec<Outcome>,
    expected_rewards: usize,
}

fn input(world: &mrrec_datasets::Dataset) -> Input {
    let mut rng = Rng(11);
    let users: Vec<&str> = {
        let mut users: Vec<&str> = world.events.iter().map(|e| e.user_id.as_str()).collect();
        users.sort();
        users.dedup();
        users
    };
    let genres: Vec<&str> = world
        .items
        .iter()
        .flat_map(|i| i.categories.iter().map(String::as_str))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut trajectories = Vec::new();
    let mut outcomes = Vec::new();
    let mut expected_rewards = 0;
    for r in 0..REQUESTS {
        let request_id = format!("req-{r}");
        let user = users[rng.below(users.len())];
        let ts = BASE_TS + 7 * r as i64;
        for index in 0..GROUP {
            let profile = format!(
                "Favours {} and {}; {}",
                genres[rng.below(genres.len())],
                genres[rng.below(genres.len())],
                world.items[rng.below(world.items.len())].title
            );
            trajectories.push(Trajectory {
                trajectory_id: format!("{request_id}/{index}"),
                request_id: request_id.clone(),
                user_id: user.into(),
                index,
                group_size: GROUP,
                served: index == 0,
                policy_version: 0,
                prompt: "Looking for something good".into(),
                segments: vec![Segment {
                    source: SegmentSource::Model,
                    text: format!("<answer>{profile}</answer>"),
                    tokens: Vec::new(),
                }],
                profile,
                memory_ids: Vec::new(),
                format_ok: rng.below(10) != 0,
                ts,
            });
        }
        let outcome = |kind: EventKind, item: &str, value: Option<f64>, n: usize| Outcome {
            request_id: request_id.clone(),
            event: Event {
                event_id: format!("{request_id}-o{n}"),
                user_id: user.into(),
                kind,
                item_id: Some(item.into()),
                value,
                text: None,
                attrs: None,
                // The request's own time: an entry's first event time is the
                // same whichever topic reaches the join first.
                ts,
            },
        };
        let item = |rng: &mut Rng| world.items[rng.below(world.items.len())].item_id.clone();
        match rng.below(10) {
            // A click, sometimes repeated (a duplicate target).
            0..=5 => {
                let target = item(&mut rng);
                outcomes.push(outcome(EventKind::Click, &target, None, 0));
                if rng.below(4) == 0 {
                    outcomes.push(outcome(EventKind::Click, &item(&mut rng), None, 1));
                }
                expected_rewards += GROUP as usize;
            }
            // A low rating first: not a target; then a good one.
            6 => {
                outcomes.push(outcome(EventKind::Rate, &item(&mut rng), Some(2.0), 0));
                outcomes.push(outcome(EventKind::Rate, &item(&mut rng), Some(5.0), 1));
                expected_rewards += GROUP as usize;
            }
            // Only a view and a low rating: no reward.
            7 => {
                outcomes.push(outcome(EventKind::View, &item(&mut rng), None, 0));
                outcomes.push(outcome(EventKind::Rate, &item(&mut rng), Some(1.0), 1));
            }
            // No outcome at all.
            _ => {}
        }
    }
    // Outcomes of requests no trajectory belongs to.
    for g in 0..200 {
        outcomes.push(Outcome {
            request_id: format!("ghost-{g}"),
            event: Event {
                event_id: format!("ghost-{g}-o"),
                user_id: users[g % users.len()].into(),
                kind: EventKind::Purchase,
                item_id: Some(world.items[g % world.items.len()].item_id.clone()),
                value: None,
                text: None,
                attrs: None,
                ts: BASE_TS + g as i64,
            },
        });
    }
    Input {
        trajectories,
        outcomes,
        expected_rewards,
    }
}

async fn publish(bootstrap: &str, run: &str, input: &Input) {
    let clients = mrrec_stream::KafkaClients::new(bootstrap, &BTreeMap::new());
    let publisher = mrrec_stream::Publisher::new(&clients, "test").unwrap();
    let mut records: Vec<mrrec_stream::OutgoingRecord> = input
        .trajectories
        .iter()
        .map(|t| mrrec_stream::OutgoingRecord {
            topic: format!("{run}.trajectories"),
            key: Some(t.request_id.clone().into_bytes()),
            payload: mrrec_messages::encode(t).unwrap(),
        })
        .collect();
    records.extend(input.outcomes.iter().map(|o| mrrec_stream::OutgoingRecord {
        topic: format!("{run}.outcomes"),
        key: Some(o.event.user_id.clone().into_bytes()),
        payload: mrrec_messages::encode(o).unwrap(),
    }));
    publisher
        .publish_all(records)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Every record of `{run}.rewards`: (distinct rewards by trajectory id,
/// without the wall-clock `ts`; copies beyond the first).
async fn rewards(bootstrap: &str, run: &str, at_least: usize) -> (BTreeMap<String, String>, usize) {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message as _;
    let clients = mrrec_stream::KafkaClients::new(bootstrap, &BTreeMap::new());
    let consumer: StreamConsumer = clients.reader(&format!("{run}-reader")).create().unwrap();
    consumer.subscribe(&[&format!("{run}.rewards")]).unwrap();
    let mut distinct = BTreeMap::new();
    let mut copies = 0;
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline
        && (distinct.len() < at_least || quiet_since.elapsed() < Duration::from_secs(3))
    {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        quiet_since = Instant::now();
        let mut reward: Reward = serde_json::from_slice(message.payload().unwrap()).unwrap();
        reward.ts = 0;
        let text = serde_json::to_string(&reward).unwrap();
        match distinct.insert(reward.trajectory_id.clone(), text.clone()) {
            None => {}
            Some(before) => {
                assert_eq!(before, text, "a replayed reward differs");
                copies += 1;
            }
        }
    }
    (distinct, copies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_reward_stage_joins_exactly_like_a_clean_one() {
    let started = Instant::now();
    let tansu = Tansu::start().unwrap();
    let clean_redis = Redis::start().unwrap();
    let killed_redis = Redis::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let world = mrrec_datasets::synthetic::world(
        5,
        WorldSize {
            items: 300,
            users: 120,
            ratings_per_user: 10,
        },
    );
    let items = tmp.path().join("items.jsonl");
    let events = tmp.path().join("events.jsonl");
    write_lines(&items, &world.items);
    write_lines(&events, &world.events);
    let input = input(&world);
    let total = (input.trajectories.len() + input.outcomes.len()) as i64;
    let unknown_items = input
        .outcomes
        .iter()
        .filter(|o| {
            !world
                .items
                .iter()
                .any(|i| Some(&i.item_id) == o.event.item_id.as_ref())
        })
        .count();
    assert_eq!(unknown_items, 0);

    // Each run: its own topics and Redis, the same memory (distilled from
    // the same events), the same input.
    let mut stores = Vec::new();
    for (run, redis) in [("clean", &clean_redis), ("killed", &killed_redis)] {
        let env = run_env(&tansu, redis, run, tmp.path());
        run_ok(&["topics", "create"], &env);
        load_jsonl(&items, &events, &env);
        let mut store = connect(&redis.url()).await;
        let mut distill = Running::stage("distill", &env);
        wait_for_records(
            &mut store,
            "mrrec:offsets",
            (world.items.len() + world.events.len()) as i64,
            &mut [&mut distill],
            Duration::from_secs(120),
        )
        .await;
        distill.terminate("distill");
        publish(&tansu.bootstrap(), run, &input).await;
        stores.push((run, env, store));
    }
    let [(_, clean_env, mut clean), (_, killed_env, mut killed)] =
        <[_; 2]>::try_from(stores).ok().unwrap();
    eprintln!(
        "memory distilled and input published at {:?}",
        started.elapsed()
    );

    let clean_started = Instant::now();
    let mut reward = Running::stage("reward", &clean_env);
    let timeout = Duration::from_secs(180);
    wait_for_records(&mut clean, OFFSETS, total, &mut [&mut reward], timeout).await;
    reward.terminate("clean reward");
    eprintln!(
        "clean reward run: {total} records in {:?}",
        clean_started.elapsed()
    );

    let mut kills = 0;
    for fraction in kill_points(10) {
        let mut reward = Running::stage("reward", &killed_env);
        wait_for_records(
            &mut killed,
            OFFSETS,
            (total as f64 * fraction) as i64,
            &mut [&mut reward],
            timeout,
        )
        .await;
        let at = stored_records(&mut killed, OFFSETS).await;
        reward.kill();
        // Mid-stream, not after the fact: the kill must leave work behind.
        assert!(
            at < total,
            "kill {} came after all {total} records",
            kills + 1
        );
        kills += 1;
        eprintln!("SIGKILL {kills} at {at} of {total} records");
        // tansu 0.6 keeps a member that died less than a session timeout
        // before the next join (see the distill test).
        tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(1)).await;
    }
    let mut reward = Running::stage("reward", &killed_env);
    wait_for_records(&mut killed, OFFSETS, total, &mut [&mut reward], timeout).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    reward.terminate("restarted reward");

    // The runs differ only in their topic names, which the stored offsets
    // carry ("clean.outcomes:3" against "killed.outcomes:3").
    let killed_dump = dump(&mut killed)
        .await
        .into_iter()
        .map(|(key, fields)| {
            let fields = fields
                .into_iter()
                .map(|(f, v)| (f.replace("killed.", "clean."), v))
                .collect();
            (key, fields)
        })
        .collect();
    assert_same_keyspace(
        &dump(&mut clean).await,
        &killed_dump,
        "ten SIGKILLs and restarts",
    );
    let (clean_rewards, clean_copies) =
        rewards(&tansu.bootstrap(), "clean", input.expected_rewards).await;
    let (killed_rewards, killed_copies) =
        rewards(&tansu.bootstrap(), "killed", input.expected_rewards).await;
    assert_eq!(clean_copies, 0, "a clean run publishes each reward once");
    assert_eq!(clean_rewards.len(), input.expected_rewards);
    let rewarded: HashSet<&str> = clean_rewards
        .keys()
        .map(|id| id.split('/').next().unwrap())
        .collect();
    assert!(rewarded.iter().all(|r| r.starts_with("req-")));
    assert_eq!(
        clean_rewards.len(),
        killed_rewards.len(),
        "rewarded trajectories"
    );
    for (id, reward) in &clean_rewards {
        assert_eq!(Some(reward), killed_rewards.get(id), "reward of {id}");
    }
    eprintln!(
        "reward crash test: {kills} kills, {} rewards, lost 0, replayed copies {killed_copies} (identical), {:?} in all",
        clean_rewards.len(),
        started.elapsed()
    );
}
