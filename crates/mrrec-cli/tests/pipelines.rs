//! Pipelines as an operator runs them. `mrrec run --pipeline
//! pipelines/serving.toml` and `--pipeline pipelines/learning.toml`,
//! started as two processes against one tansu broker and one Redis,
//! together do what `full` does: history becomes memory, requests are
//! answered, outcomes become rewards, a training round publishes v0001 and
//! the serving process switches to it; SIGTERM drains both. And `mrrec run
//! --stage all` on embedded defaults starts every stage in one process and
//! drains them on SIGTERM.

mod common;

use common::{load_jsonl, mrrec, repo, run_ok, write_lines, Running};
use mrrec_testkit::{Redis, Tansu};
use redis::AsyncCommands;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A fresh policy v0000 in `policy`, its tokenizer trained on `items`.
fn init_policy(policy: &Path, items: &Path) {
    run_ok(
        &[
            "model",
            "init",
            "--out",
            policy.join("v0000").to_str().unwrap(),
            "--catalog",
            items.to_str().unwrap(),
        ],
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_and_learning_processes_together_do_what_full_does() {
    let tansu = Tansu::start().unwrap();
    let redis = Redis::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let env: Vec<(&str, String)> = vec![
        ("MRREC__KAFKA__BROKERS", tansu.bootstrap()),
        ("MRREC__KAFKA__GROUP_PREFIX", "pipelines-".into()),
        (
            "MRREC__KAFKA__PROPERTIES__SESSION.TIMEOUT.MS",
            "6000".into(),
        ),
        ("MRREC__STORE__BACKEND", "redis".into()),
        ("MRREC__STORE__URL", redis.url()),
        (
            "MRREC__INDEX__PATH",
            tmp.path().join("index").display().to_string(),
        ),
        (
            "MRREC__POLICY__DIR",
            tmp.path().join("policy").display().to_string(),
        ),
        ("MRREC__AGENT__GROUP_SIZE", "4".into()),
        ("MRREC__AGENT__TEMPERATURE", "1.0".into()),
        ("MRREC__TRAIN__EVERY_REWARDS", "24".into()),
        ("MRREC__TRAIN__HOLDOUT_FRACTION", "0".into()),
        ("MRREC__RECOMMEND__TIMEOUT_MS", "30000".into()),
    ];

    // A small world with taste structure, loaded through the topics.
    let size = mrrec_datasets::synthetic::WorldSize {
        items: 120,
        users: 40,
        ratings_per_user: 12,
    };
    let world = mrrec_datasets::synthetic::world(7, size);
    let split = mrrec_datasets::split(&world);
    let items = tmp.path().join("items.jsonl");
    let events = tmp.path().join("events.jsonl");
    write_lines(&items, &world.items);
    write_lines(&events, &split.valid_history);
    run_ok(&["topics", "create"], &env);
    load_jsonl(&items, &events, &env);
    init_policy(&tmp.path().join("policy"), &items);

    let serving_file = repo().join("pipelines/serving.toml");
    let learning_file = repo().join("pipelines/learning.toml");
    let mut serving = Running::start(&["run", "--pipeline", serving_file.to_str().unwrap()], &env);
    // The learning process re-ranks with the item index the serving
    // process's distill stage writes: start it once memory is in.
    let mut store = redis::Client::open(redis.url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let loaded = (world.items.len() + split.valid_history.len()) as i64;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let offsets: BTreeMap<String, i64> =
            store.hgetall("mrrec:offsets").await.unwrap_or_default();
        if offsets.values().map(|o| o + 1).sum::<i64>() >= loaded {
            break;
        }
        serving.assert_alive("serving");
        assert!(Instant::now() < deadline, "distill did not finish in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut learning = Running::start(
        &["run", "--pipeline", learning_file.to_str().unwrap()],
        &env,
    );

    let clients = mrrec_stream::KafkaClients::new(&tansu.bootstrap(), &BTreeMap::new());
    let client = mrrec_recommend::RecommendClient::connect(&clients, "mrrec.")
        .await
        .unwrap();
    let publisher = mrrec_stream::Publisher::new(&clients, "test").unwrap();
    let mut outcomes = Vec::new();
    for (i, user) in split.users.iter().take(8).enumerate() {
        let request = mrrec_messages::Request {
            request_id: format!("p-{i}"),
            user_id: user.user_id.clone(),
            query: Some("something I would like".into()),
            k: 10,
            exclude_seen: true,
            ts: mrrec_stream::now_ms(),
        };
        let received = client
            .ask(&request, Duration::from_secs(120))
            .await
            .unwrap();
        let response = received.response;
        assert_eq!(response.error, None, "{response:?}");
        assert_eq!(response.items.len(), 10, "{response:?}");
        assert_eq!(response.policy_version, 0);
        outcomes.push(mrrec_stream::OutgoingRecord {
            topic: "mrrec.outcomes".into(),
            key: Some(user.user_id.clone().into_bytes()),
            payload: mrrec_messages::encode(&mrrec_messages::Outcome {
                request_id: request.request_id.clone(),
                event: mrrec_messages::Event {
                    event_id: format!("p-{i}-outcome"),
                    user_id: user.user_id.clone(),
                    kind: mrrec_messages::EventKind::Rate,
                    item_id: Some(user.valid.item_id.clone()),
                    value: Some(user.valid.rating),
                    text: None,
                    attrs: None,
                    ts: request.ts + 1,
                },
            })
            .unwrap(),
        });
    }
    publisher
        .publish_all(outcomes)
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    // The learning process turns them into rewards and a new version; the
    // serving process switches to it by itself.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut n = 0;
    loop {
        serving.assert_alive("serving");
        learning.assert_alive("learning");
        let request = mrrec_messages::Request {
            request_id: format!("after-{n}"),
            user_id: split.users[0].user_id.clone(),
            query: None,
            k: 3,
            exclude_seen: true,
            ts: mrrec_stream::now_ms(),
        };
        n += 1;
        let received = client
            .ask(&request, Duration::from_secs(120))
            .await
            .unwrap();
        if received.response.policy_version == 1 {
            assert_eq!(received.response.error, None);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "serving never switched to v0001; learning said:\n{}",
            learning.stderr()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(tmp.path().join("policy/v0001/model.safetensors").is_file());

    let serving_log = serving.terminate("serving");
    let learning_log = learning.terminate("learning");
    for (log, stages) in [
        (&serving_log, ["distill", "recommend"]),
        (&learning_log, ["reward", "train"]),
    ] {
        for stage in stages {
            assert!(
                log.contains(&format!("{stage} stopped:")),
                "{stage} did not report:\n{log}"
            );
            assert!(log.contains(&format!("group pipelines-{stage}")), "{log}");
        }
    }
}

#[test]
fn run_stage_all_starts_every_stage_on_embedded_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let items = tmp.path().join("items.jsonl");
    let world = mrrec_datasets::synthetic::world(
        3,
        mrrec_datasets::synthetic::WorldSize {
            items: 40,
            users: 5,
            ratings_per_user: 5,
        },
    );
    write_lines(&items, &world.items);
    let env: Vec<(&str, String)> = vec![
        (
            "MRREC__STORE__PATH",
            tmp.path().join("store").display().to_string(),
        ),
        (
            "MRREC__INDEX__PATH",
            tmp.path().join("index").display().to_string(),
        ),
        (
            "MRREC__POLICY__DIR",
            tmp.path().join("policy").display().to_string(),
        ),
    ];
    init_policy(&tmp.path().join("policy"), &items);
    let mut all = Running::start(&["run", "--stage", "all"], &env);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !all.stderr().contains("  train: group mrrec-train") {
        all.assert_alive("run --stage all");
        assert!(Instant::now() < deadline, "not started:\n{}", all.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    all.assert_alive("run --stage all");
    let log = all.terminate("run --stage all");
    for stage in ["distill", "recommend", "reward", "train"] {
        assert!(log.contains(&format!("{stage} stopped:")), "{log}");
    }

    // A pipeline file with a mistake is refused before anything starts.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n[[stages]]\nstage = \"indexer\"\n").unwrap();
    let output = mrrec(&["run", "--pipeline", bad.to_str().unwrap()], &env)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("indexer"),
        "{stderr}"
    );
}
