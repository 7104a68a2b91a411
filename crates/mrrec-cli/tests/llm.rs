//! The LLM tier as a user runs it: `mrrec model init` builds a policy, `mrrec
//! llm serve` (mistralrs-server-core) serves it, and the http backend passes
//! the same agent-level suite as the embedded one — then the server follows a
//! new version announced on `mrrec.policy` (tansu) while requests stream, with
//! no failed request and every answer from the version it names.

use mrrec_llm::conformance;
use mrrec_llm::{EmbeddedLlm, EngineOptions, GenerationRequest, HttpLlm, Llm};
use mrrec_testkit::{free_port, Tansu};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn mrrec(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut command = mrrec_testkit::isolated_mrrec(env!("CARGO_BIN_EXE_mrrec"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

fn ok(output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

const SMALL: [&str; 10] = [
    "--vocab-size",
    "1024",
    "--hidden-size",
    "64",
    "--intermediate-size",
    "128",
    "--layers",
    "2",
    "--heads",
    "2",
];

fn init(dir: &Path, seed: u64) -> String {
    let dir = dir.display().to_string();
    let seed = seed.to_string();
    let mut args = vec![
        "model",
        "init",
        "--out",
        &dir,
        "--seed",
        &seed,
        "--kv-heads",
        "2",
    ];
    args.extend(SMALL);
    ok(mrrec(&args, &[]).output().unwrap())
}

struct Server(Child);

impl Server {
    /// `mrrec llm serve --listen listen` with `env`, its stderr in `log`.
    fn serve(listen: &str, env: &[(&str, String)], log: &Path) -> Server {
        Server(
            mrrec(&["llm", "serve", "--listen", listen], env)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serving_version(client: &reqwest::Client, port: u16) -> Option<u32> {
    let body: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/mrrec/policy"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["version"].as_u64().map(|v| v as u32)
}

/// Polls `GET /mrrec/policy` until it reports `version` (up to a minute).
async fn wait_for_version(client: &reqwest::Client, port: u16, version: u32) -> bool {
    for _ in 0..600 {
        if serving_version(client, port).await == Some(version) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn greedy() -> GenerationRequest {
    conformance::greedy_agent_request()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_serve_passes_the_agent_suite_and_swaps_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy");
    let stdout = init(&policy.join("v0000"), 0);
    assert!(stdout.contains("policy model written"), "{stdout}");
    // A policy directory is never overwritten.
    let again = mrrec(
        &[
            "model",
            "init",
            "--out",
            policy.join("v0000").to_str().unwrap(),
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let tansu = Tansu::start().unwrap();
    let env = vec![
        ("MRREC__KAFKA__BROKERS", tansu.bootstrap()),
        ("MRREC__POLICY__DIR", policy.display().to_string()),
        ("MRREC__METRICS__LISTEN", String::new()),
    ];
    ok(mrrec(&["topics", "create"], &env).output().unwrap());
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let log_path = tmp.path().join("serve.log");
    let _server = Server::serve(&listen, &env, &log_path);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let client = reqwest::Client::new();
    let up = wait_for_version(&client, port, 0).await;
    assert!(up, "llm serve did not come up on {listen}:\n{}", log());

    let http = Arc::new(HttpLlm::new(&format!("http://{listen}/v1")).unwrap());
    conformance::run(http.as_ref(), 0).await;

    // Both backends compute the same thing on the same directory.
    let embedded = EmbeddedLlm::open(&policy.join("v0000"), EngineOptions::default())
        .await
        .unwrap();
    let expected_v0 = embedded.generate(greedy()).await.unwrap().completions[0]
        .text
        .clone();
    assert_eq!(
        http.generate(greedy()).await.unwrap().completions[0].text,
        expected_v0
    );
    drop(embedded);

    // A new version, announced while requests stream.
    init(&policy.join("v0001"), 1);
    let expected_v1 = EmbeddedLlm::open(&policy.join("v0001"), EngineOptions::default())
        .await
        .unwrap()
        .generate(greedy())
        .await
        .unwrap()
        .completions[0]
        .text
        .clone();
    assert_ne!(expected_v0, expected_v1);

    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (http, stop) = (http.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                results.push(http.generate(greedy()).await);
            }
            results
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let clients = mrrec_stream::KafkaClients::new(&tansu.bootstrap(), &Default::default());
    let registry = mrrec_policy::PolicyRegistry::new(&policy);
    let v1 = registry.latest().unwrap().unwrap();
    let announcement = registry.announcement(&v1, Some(0), Default::default());
    mrrec_stream::Publisher::new(&clients, "test")
        .unwrap()
        .publish_all(vec![mrrec_stream::OutgoingRecord {
            topic: "mrrec.policy".into(),
            key: None,
            payload: mrrec_messages::encode(&announcement).unwrap(),
        }])
        .await
        .unwrap();
    let switched = wait_for_version(&client, port, 1).await;
    assert!(
        switched,
        "llm serve did not switch to version 1:\n{}",
        log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);

    let mut seen = [0usize; 2];
    for sender in senders {
        for result in sender.await.unwrap() {
            let generation = result.expect("no request may fail during a swap");
            let version = generation.policy_version as usize;
            let expected = [&expected_v0, &expected_v1][version];
            assert_eq!(
                &generation.completions[0].text, expected,
                "version {version}"
            );
            seen[version] += 1;
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "answers per version: {seen:?}");
}

#[test]
fn model_init_with_a_warm_start_imitates_the_teacher_and_still_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = tmp.path().join("items.jsonl");
    let mut lines = String::new();
    for (i, category) in ["Comedy", "Drama"].iter().cycle().take(12).enumerate() {
        lines.push_str(&format!(
            "{{\"item_id\":\"i{i}\",\"title\":\"Film number {i}\",\"categories\":[\"{category}\"]}}\n"
        ));
    }
    std::fs::write(&catalog, lines).unwrap();
    let dir = tmp.path().join("v0000");
    let dir_text = dir.display().to_string();
    let catalog_text = catalog.display().to_string();
    let mut args = vec![
        "model",
        "init",
        "--out",
        &dir_text,
        "--catalog",
        &catalog_text,
        "--kv-heads",
        "2",
        "--sft",
        "24",
        "--sft-epochs",
        "2",
    ];
    args.extend(SMALL);
    ok(mrrec(&args, &[]).output().unwrap());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("policy.json")).unwrap()).unwrap();
    assert_eq!(meta["origin"], "init+sft");
    let first = meta["metrics"]["sft_loss_first_epoch"].as_f64().unwrap();
    let last = meta["metrics"]["sft_loss_last_epoch"].as_f64().unwrap();
    assert!(last < first, "{meta}");
    // The warm-started weights still load and answer in mistral.rs.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let llm = EmbeddedLlm::open(&dir, EngineOptions::default())
            .await
            .unwrap();
        let answer = llm
            .generate(mrrec_llm::conformance::greedy_agent_request())
            .await
            .unwrap();
        assert!(mrrec_llm::conformance::is_protocol_turn(
            &answer.completions[0].text
        ));
    });
}

/// Issue 19, points 1 and 2: `llm serve` mounts chat, models, health and
/// `/mrrec/policy` only — mistral.rs's admin routes answer 404 — sends no
/// CORS headers, and with `MRREC__LLM__API_KEY` set refuses calls without
/// the bearer token (401) while the http backend, given the key, is served.
/// Pinned to v0000 (`llm.model_dir`, a rollback), it stays there although
/// v0001 is announced on a real broker before it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_serve_is_closed_checks_its_bearer_token_and_stays_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy");
    init(&policy.join("v0000"), 0);
    init(&policy.join("v0001"), 1);
    let tansu = Tansu::start().unwrap();
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let key = "k3y-only-the-test-knows";
    let env = vec![
        ("MRREC__KAFKA__BROKERS", tansu.bootstrap()),
        ("MRREC__POLICY__DIR", policy.display().to_string()),
        ("MRREC__METRICS__LISTEN", String::new()),
        ("MRREC__LLM__API_KEY", key.to_owned()),
        (
            "MRREC__LLM__MODEL_DIR",
            policy.join("v0000").display().to_string(),
        ),
        ("RUST_LOG", "info".to_owned()),
    ];
    ok(mrrec(&["topics", "create"], &env).output().unwrap());
    let clients = mrrec_stream::KafkaClients::new(&tansu.bootstrap(), &Default::default());
    let registry = mrrec_policy::PolicyRegistry::new(&policy);
    let v1 = registry.latest().unwrap().unwrap();
    assert_eq!(v1.version, 1);
    mrrec_stream::Publisher::new(&clients, "test")
        .unwrap()
        .publish_all(vec![mrrec_stream::OutgoingRecord {
            topic: "mrrec.policy".into(),
            key: None,
            payload: mrrec_messages::encode(&registry.announcement(
                &v1,
                Some(0),
                Default::default(),
            ))
            .unwrap(),
        }])
        .await
        .unwrap();
    let log_path = tmp.path().join("serve.log");
    let _server = Server::serve(&listen, &env, &log_path);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let client = reqwest::Client::new();
    let base = format!("http://{listen}");
    let mut up = false;
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            up = r.status() == 200;
            if up {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "llm serve did not come up:\n{}", log());

    // The admin routes of mistral.rs's router are not there, token or not.
    for path in [
        "/v1/models/unload",
        "/v1/models/reload",
        "/re_isq",
        "/v1/models/tune",
    ] {
        let status = client
            .post(format!("{base}{path}"))
            .bearer_auth(key)
            .json(&serde_json::json!({ "model_id": "default" }))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{path}");
    }
    // No token, a wrong one: 401. The right one: served.
    let chat = serde_json::json!({
        "model": "default",
        "messages": [{ "role": "user", "content": "hello" }],
        "max_tokens": 4,
        "top_k": 1,
    });
    let no_token = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let wrong = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("k3y-only-the-test-know")
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    for path in ["/v1/models", "/mrrec/policy"] {
        let status = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{path}");
    }
    let served = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .header("origin", "https://evil.example")
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200, "{}", log());
    assert!(
        served
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "no CORS: {:?}",
        served.headers()
    );
    let get_json = |path: &'static str| {
        let request = client.get(format!("{base}{path}")).bearer_auth(key);
        async move {
            request
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let models = get_json("/v1/models").await;
    assert_eq!(models["data"][0]["id"], "default", "{models}");

    // The http backend sends the key it is given, and is refused without it.
    let with_key = HttpLlm::new(&format!("{base}/v1"))
        .unwrap()
        .with_api_key(key);
    let generation = with_key.generate(greedy()).await.unwrap();
    assert_eq!(generation.policy_version, 0);
    let without = HttpLlm::new(&format!("{base}/v1")).unwrap();
    assert!(matches!(
        without.generate(greedy()).await,
        Err(mrrec_llm::LlmError::Status { status: 401, .. })
    ));
    assert!(!log().contains(key), "the key must never be logged");

    // Pinned: v0001 was announced, and v0000 still serves a while later.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let policy_now = get_json("/mrrec/policy").await;
    assert_eq!(policy_now["version"], 0, "{policy_now}\n{}", log());
    assert!(log().contains("not following mrrec.policy"), "{}", log());
}
