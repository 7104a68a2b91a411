//! The embedded backend on real mistral.rs inference: the agent-level suite,
//! hot swap under a stream of requests, a broken version refused without
//! harm, and `mrrec.policy` followed through a (mock) broker.

use mrrec_llm::conformance;
use mrrec_llm::{EmbeddedLlm, EngineOptions, GenerationRequest, Llm, PolicyTarget};
use mrrec_messages::{DeadLetter, PolicyAnnouncement, Topic};
use mrrec_policy::{init_model, ModelSpec, PolicyMeta, PolicyRegistry};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Publishes versions `0..n` (seed = version) into a registry under `root`.
fn registry_with_versions(root: &Path, n: u32) -> (PolicyRegistry, Vec<PathBuf>) {
    let registry = PolicyRegistry::new(root.join("policy"));
    let catalog = vec!["Toy Story (1995) | Animation, Comedy".to_owned()];
    let mut paths = Vec::new();
    for version in 0..n {
        let staging = registry.staging_dir(version).unwrap();
        let meta = PolicyMeta::new(Some(version), version.checked_sub(1), "test");
        init_model(
            &staging,
            &ModelSpec::tiny(u64::from(version)),
            &catalog,
            &meta,
        )
        .unwrap();
        paths.push(registry.publish(&staging, version).unwrap().path);
    }
    (registry, paths)
}

async fn open(dir: &Path) -> EmbeddedLlm {
    EmbeddedLlm::open(dir, EngineOptions::default())
        .await
        .unwrap()
}

fn greedy_request() -> GenerationRequest {
    conformance::greedy_agent_request()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_suite_passes_in_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, paths) = registry_with_versions(tmp.path(), 1);
    let llm = open(&paths[0]).await;
    conformance::run(&llm, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_give_up_mid_generation_do_not_break_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, paths) = registry_with_versions(tmp.path(), 1);
    let llm = open(&paths[0]).await;
    let expected = llm.generate(greedy_request()).await.unwrap();
    // Callers that time out (as the recommend stage's deadline does) drop
    // their call while the engine is still generating for it.
    for _ in 0..3 {
        let gave_up =
            tokio::time::timeout(Duration::from_micros(200), llm.generate(greedy_request())).await;
        assert!(
            gave_up.is_err(),
            "the call should still be running after 200 µs"
        );
    }
    // The engine still answers, with the same text.
    let after = tokio::time::timeout(Duration::from_secs(30), llm.generate(greedy_request()))
        .await
        .expect("the engine answers after dropped calls")
        .unwrap();
    assert_eq!(after.completions, expected.completions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_versions_under_load_fails_no_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, paths) = registry_with_versions(tmp.path(), 4);

    // What each version answers, greedily: the fingerprint a response's text
    // must match for the version it names.
    let mut expected = Vec::new();
    for path in &paths {
        let llm = open(path).await;
        let generation = llm.generate(greedy_request()).await.unwrap();
        expected.push(generation.completions[0].text.clone());
    }
    for (i, a) in expected.iter().enumerate() {
        for b in &expected[i + 1..] {
            assert_ne!(a, b, "two versions answer alike; the check would be blind");
        }
    }

    let llm = Arc::new(open(&paths[0]).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The newest version any answer named so far: each swap waits until the
    // serving version has answered at least once (on a busy machine 400 ms
    // may pass without an answer).
    let newest = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (llm, stop, newest) = (llm.clone(), stop.clone(), newest.clone());
        senders.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let result = llm.generate(greedy_request()).await;
                if let Ok(generation) = &result {
                    newest.fetch_max(
                        generation.policy_version,
                        std::sync::atomic::Ordering::SeqCst,
                    );
                }
                results.push(result);
            }
            results
        }));
    }
    let answered = |version: u32| {
        let newest = newest.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while newest.load(std::sync::atomic::Ordering::SeqCst) < version
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for (version, path) in paths.iter().enumerate().skip(1) {
        answered(version as u32 - 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        llm.switch_to(path).await.unwrap();
    }
    answered(paths.len() as u32 - 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);

    let mut served = [0usize; 4];
    let mut total = 0;
    for sender in senders {
        for result in sender.await.unwrap() {
            let generation = result.expect("no request may fail during a swap");
            let version = generation.policy_version as usize;
            assert_eq!(
                generation.completions[0].text, expected[version],
                "the response names version {version} but is not its answer"
            );
            served[version] += 1;
            total += 1;
        }
    }
    assert!(
        served[0] > 0 && served[3] > 0,
        "served per version: {served:?}"
    );
    assert!(total >= 12, "only {total} requests ran");
    // The old versions unload once drained.
    for _ in 0..200 {
        if llm.loaded_models().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(llm.loaded_models().len(), 1, "{:?}", llm.loaded_models());
    assert_eq!(llm.serving_version(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_version_is_refused_and_the_old_one_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let (registry, paths) = registry_with_versions(tmp.path(), 1);
    let llm = open(&paths[0]).await;

    let broken = registry.path(1);
    std::fs::create_dir_all(&broken).unwrap();
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(paths[0].join(file), broken.join(file)).unwrap();
    }
    std::fs::write(broken.join("model.safetensors"), b"not weights").unwrap();
    let err = llm.switch_to(&broken).await.unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");

    let missing = llm
        .switch_to(&tmp.path().join("nowhere"))
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("mrrec model init"),
        "{missing}"
    );

    assert_eq!(llm.serving_version(), 0);
    llm.generate(greedy_request()).await.unwrap();

    // Opening a broken directory fails at start-up with the file named.
    let err = EmbeddedLlm::open(&broken, EngineOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_on_the_policy_topic_are_followed() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message as _;

    let tmp = tempfile::tempdir().unwrap();
    let (registry, paths) = registry_with_versions(tmp.path(), 3);
    let broker = mrrec_stream::EmbeddedBroker::start("mrrec.", 2).unwrap();
    let clients = mrrec_stream::KafkaClients::new(broker.bootstrap_servers(), &Default::default());
    let llm = Arc::new(open(&paths[0]).await);
    let shutdown = mrrec_stream::Shutdown::new();
    let follower = {
        let (clients, shutdown) = (clients.clone(), shutdown.clone());
        let dir = registry.dir().to_owned();
        let target: Arc<dyn PolicyTarget> = llm.clone();
        tokio::spawn(async move {
            mrrec_llm::follow_policy_topic(&clients, "mrrec.", "test", &dir, target, shutdown).await
        })
    };
    let publisher = mrrec_stream::Publisher::new(&clients, "test").unwrap();
    let announce = |payload: Vec<u8>| mrrec_stream::OutgoingRecord {
        topic: Topic::Policy.name("mrrec."),
        key: None,
        payload,
    };
    let announcement = |version: u32| {
        let v = registry.versions().unwrap()[version as usize].clone();
        mrrec_messages::encode(&registry.announcement(
            &v,
            version.checked_sub(1),
            Default::default(),
        ))
        .unwrap()
    };
    let stale: PolicyAnnouncement = PolicyAnnouncement {
        version: 0,
        path: paths[0].display().to_string(),
        parent: None,
        metrics: Default::default(),
        ts: 1,
    };
    // Forged announcements (issue 19): another version's directory, a copy
    // of a real model outside policy.dir, a version with no directory.
    let outside = tmp.path().join("elsewhere/v0002");
    std::fs::create_dir_all(&outside).unwrap();
    for entry in std::fs::read_dir(&paths[2]).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), outside.join(entry.file_name())).unwrap();
    }
    let forged = |version: u32, path: &Path| {
        mrrec_messages::encode(&PolicyAnnouncement {
            version,
            path: path.display().to_string(),
            parent: Some(0),
            metrics: Default::default(),
            ts: 1,
        })
        .unwrap()
    };
    publisher
        .publish_all(vec![
            announce(forged(2, &paths[1])),
            announce(forged(2, &outside)),
            announce(forged(7, &registry.dir().join("v0007"))),
            announce(announcement(2)),
            announce(b"{not json".to_vec()),
            announce(mrrec_messages::encode(&stale).unwrap()),
        ])
        .await
        .unwrap();

    let wait_for = |version: u32| {
        let llm = llm.clone();
        async move {
            for _ in 0..500 {
                if llm.serving_version() == version {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("still serving {} (wanted {version})", llm.serving_version());
        }
    };
    wait_for(2).await;
    // An older announcement (version 1 after 2) is not a downgrade.
    publisher
        .publish_all(vec![announce(announcement(1))])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(llm.serving_version(), 2);
    let generation = llm.generate(greedy_request()).await.unwrap();
    assert_eq!(generation.policy_version, 2);

    // The forged and the unreadable announcements are in the DLQ with
    // their reasons; nothing else is.
    let reader: StreamConsumer = clients.reader("dlq-check").create().unwrap();
    reader.subscribe(&[&Topic::Dlq.name("mrrec.")]).unwrap();
    let mut letters = Vec::new();
    for _ in 0..4 {
        let record = tokio::time::timeout(Duration::from_secs(20), reader.recv())
            .await
            .expect("a DLQ record")
            .unwrap();
        let letter: DeadLetter = mrrec_messages::decode(record.payload().unwrap()).unwrap();
        assert_eq!(letter.source_topic, "mrrec.policy");
        letters.push(letter);
    }
    letters.sort_by_key(|l| l.offset);
    let offsets: Vec<i64> = letters.iter().map(|l| l.offset).collect();
    assert_eq!(offsets, [0, 1, 2, 4]);
    assert!(
        letters[0]
            .error
            .contains("not policy.dir's directory for version 2"),
        "{}",
        letters[0].error
    );
    assert!(
        letters[1]
            .error
            .contains("not policy.dir's directory for version 2"),
        "{}",
        letters[1].error
    );
    assert!(
        letters[2].error.contains("v0007 cannot be resolved"),
        "{}",
        letters[2].error
    );
    assert_eq!(letters[4 - 1].payload, "{not json");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), reader.recv())
            .await
            .is_err(),
        "only the refused and unreadable announcements are dead-lettered"
    );

    shutdown.trigger();
    follower.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_chat_rendering_is_what_the_engine_feeds_the_model() {
    use mrrec_llm::{ChatMessage, Role};
    use mrrec_policy::protocol::{render_chat, INSTRUCTIONS};

    let tmp = tempfile::tempdir().unwrap();
    let (_, paths) = registry_with_versions(tmp.path(), 1);
    let llm = open(&paths[0]).await;
    let messages = vec![
        ChatMessage::system(INSTRUCTIONS),
        ChatMessage::user("Request: Ünïcode \"quotes\" and  two spaces\nProfile: none"),
        ChatMessage::assistant("<think>hm</think><retrieve>funny films</retrieve>"),
        ChatMessage::user("<memory id=\"u1:pref:comedy\">Comedy: 12 ratings</memory>"),
    ];
    let mut chat = mistralrs::TextMessages::new();
    for message in &messages {
        let role = match message.role {
            Role::System => mistralrs::TextMessageRole::System,
            Role::User => mistralrs::TextMessageRole::User,
            Role::Assistant => mistralrs::TextMessageRole::Assistant,
        };
        chat = chat.add_message(role, &message.content);
    }
    let model_id = llm.lease().model_id.clone();
    let engine = llm
        .sdk_model()
        .tokenize_with_model(
            either::Either::Left(chat),
            None,
            true,
            true,
            None,
            Some(&model_id),
        )
        .await
        .unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(paths[0].join("tokenizer.json")).unwrap();
    let ours = tokenizer
        .encode(render_chat(&messages, true), true)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(
        engine, ours,
        "the trainer would score other tokens than the engine ran"
    );
}
