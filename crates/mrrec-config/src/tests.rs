//! Layering, unknown keys, type errors and validation.

use super::*;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_valid_and_complete() {
    let config = Config::defaults();
    assert!(config.kafka.is_embedded());
    assert_eq!(config.topics.prefix, "mrrec.");
    assert_eq!(config.store.backend, StoreBackend::Embedded);
    assert_eq!(config.group_id("distill"), "mrrec-distill");
}

#[test]
fn file_then_environment_override_defaults() {
    let config = Config::from_toml_str(
        "[topics]\npartitions = 12\n[kafka]\nbrokers = \"k1:9092,k2:9092\"\n",
    )
    .unwrap();
    assert_eq!(config.topics.partitions, 12);
    assert_eq!(config.kafka.brokers, "k1:9092,k2:9092");

    let dir = std::env::temp_dir().join(format!("mrrec-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, "[topics]\npartitions = 12\n").unwrap();
    let config = Config::load_with_env(
        Some(&file),
        env(&[
            ("MRREC__TOPICS__PARTITIONS", "3"),
            ("MRREC__KAFKA__BROKERS", "127.0.0.1:19092"),
            ("MRREC__KAFKA__PROPERTIES__SECURITY.PROTOCOL", "SASL_SSL"),
            ("MRREC__KAFKA__PROPERTIES__SASL.MECHANISM", "PLAIN"),
            ("MRREC__KAFKA__PROPERTIES__SASL.USERNAME", "mrrec"),
            ("MRREC__KAFKA__PROPERTIES__SASL.PASSWORD", "hunter2"),
            ("MRREC__METRICS__LISTEN", ""),
            ("OTHER", "ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(config.topics.partitions, 3);
    assert_eq!(config.kafka.brokers, "127.0.0.1:19092");
    assert_eq!(config.kafka.properties["sasl.password"], "hunter2");
    assert!(
        !format!("{config:?}").contains("hunter2"),
        "secrets must not be printed"
    );
    assert_eq!(config.metrics.listen, "");
}

#[test]
fn unknown_keys_are_named_all_at_once() {
    let error =
        Config::from_toml_str("[kafka]\nbrokerz = \"x\"\n[nope]\na = 1\n[agent]\nmax_steps = 99\n")
            .unwrap_err();
    assert!(error.mentions("kafka.brokerz"), "{error}");
    assert!(error.mentions("nope"), "{error}");
    assert!(error.mentions("agent.max_steps"), "{error}");
    let error = Config::load_with_env(
        None,
        env(&[("MRREC__KAFKA__BROKRS", "x"), ("MRREC__X", "1")]),
    )
    .unwrap_err();
    assert!(error.mentions("kafka.brokrs"), "{error}");
    assert!(error.mentions("MRREC__X"), "{error}");
}

#[test]
fn type_errors_name_the_key() {
    let error = Config::from_toml_str("[topics]\npartitions = \"many\"\n").unwrap_err();
    assert!(error.mentions("topics.partitions"), "{error}");
    let error =
        Config::load_with_env(None, env(&[("MRREC__TOPICS__PARTITIONS", "abc")])).unwrap_err();
    assert!(error.mentions("topics.partitions"), "{error}");
    let error = Config::from_toml_str("[store]\nbackend = \"mongo\"\n").unwrap_err();
    assert!(error.mentions("store.backend"), "{error}");
    let error = Config::from_toml_str("[kafka\n").unwrap_err();
    assert!(error.to_string().contains("<string>"), "{error}");
}

#[test]
fn every_semantic_problem_is_reported() {
    let error = Config::from_toml_str(
        r#"
[kafka]
brokers = "no-port"
[topics]
partitions = 0
[store]
backend = "redis"
url = "http://x"
[agent]
group_size = 0
[metrics]
listen = "nowhere"
[stream]
batch_max_ms = 0
[distill]
batch_max_records = 200000
batch_max_users = 0
cache_mb = 99999999
co_occurrence_window = 21
[kafka.properties]
"group.id" = "x"
"#,
    )
    .unwrap_err();
    for key in [
        "kafka.brokers",
        "topics.partitions",
        "store.url",
        "agent.group_size",
        "metrics.listen",
        "stream.batch_max_ms",
        "distill.batch_max_records",
        "distill.batch_max_users",
        "distill.cache_mb",
        "distill.co_occurrence_window",
        "kafka.properties.group.id",
    ] {
        assert!(error.mentions(key), "{key} missing from {error}");
    }
}

#[test]
fn agent_sampling_and_recommend_limits_are_checked() {
    let error = Config::from_toml_str(
        r#"
[agent]
group_size = 4
temperature = 0.0
top_p = 0.0
max_query_chars = 0
[recommend]
concurrency = 0
timeout_ms = 0
weight_bm25 = -1.0
"#,
    )
    .unwrap_err();
    for key in [
        "agent.temperature",
        "agent.top_p",
        "agent.max_query_chars",
        "recommend.concurrency",
        "recommend.timeout_ms",
        "recommend.weight_bm25",
    ] {
        assert!(error.mentions(key), "{key} missing from {error}");
    }
    assert!(
        error.to_string().contains("greedy samples are identical"),
        "{error}"
    );
    let sampled = Config::from_toml_str("[agent]\ngroup_size = 4\ntemperature = 0.8\n").unwrap();
    assert_eq!(sampled.agent.group_size, 4);
    assert_eq!(sampled.recommend.concurrency, 1);
}

#[test]
fn trainer_and_engine_limits_are_checked() {
    let error = Config::from_toml_str(
        r#"
[llm]
max_batch_sequences = 0
[train]
learning_rate = 0.0
clip_epsilon = 1.5
kl_coef = -1.0
weight_decay = 2.0
max_grad_norm = nan
epochs = 0
minibatch = 0
chunk_tokens = 10
holdout_fraction = 1.0
max_regression = -0.1
max_tokens = 8
"#,
    )
    .unwrap_err();
    for key in [
        "llm.max_batch_sequences",
        "train.learning_rate",
        "train.clip_epsilon",
        "train.kl_coef",
        "train.weight_decay",
        "train.max_grad_norm",
        "train.epochs",
        "train.minibatch",
        "train.chunk_tokens",
        "train.holdout_fraction",
        "train.max_regression",
        "train.max_tokens",
    ] {
        assert!(error.mentions(key), "{key} missing from {error}");
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let error = Config::load_with_env(
        Some(std::path::Path::new("/nonexistent/mrrec.toml")),
        env(&[]),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/mrrec.toml"),
        "{error}"
    );
}

#[test]
fn urls_are_redacted() {
    assert_eq!(
        redact_url("redis://:pw@host:6379/0"),
        "redis://***@host:6379/0"
    );
    assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
    assert_eq!(
        redact_url("redis+unix:///run/redis.sock?db=0&pass=hunter2"),
        "redis+unix:///run/redis.sock?db=0&pass=***"
    );
    assert_eq!(
        redact_url("redis+unix:///s?PASSWORD=x#frag"),
        "redis+unix:///s?PASSWORD=***#frag"
    );
}

/// Every shipped configuration (config/*.toml) and pipeline
/// (pipelines/*.toml) loads and validates; docker/ mounts them.
#[test]
fn shipped_configs_and_pipelines_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut configs = 0;
    for entry in std::fs::read_dir(root.join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // Secrets come from the environment (prod.toml names none).
            let secrets: Vec<(String, String)> = if path.ends_with("prod.toml") {
                vec![(
                    "MRREC__KAFKA__PROPERTIES__SASL.PASSWORD".into(),
                    "from-the-environment".into(),
                )]
            } else {
                Vec::new()
            };
            if let Err(e) = Config::load_with_env(Some(&path), secrets) {
                panic!("{}: {e}", path.display());
            }
            configs += 1;
        }
    }
    assert!(configs >= 3, "default, dev and prod: found {configs}");
    // The configuration docker/compose.yaml mounts.
    let compose = root.join("docker/compose.toml");
    if let Err(e) = Config::load_with_env(Some(&compose), Vec::new()) {
        panic!("{}: {e}", compose.display());
    }
    let mut pipelines = Vec::new();
    for entry in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let pipeline =
                crate::Pipeline::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            pipelines.push(pipeline);
        }
    }
    let named = |name: &str| {
        pipelines
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pipeline named {name}"))
    };
    use crate::StageKind::*;
    for stage in [Distill, Recommend, Reward, Train] {
        assert!(named("full").runs(stage), "full runs {stage}");
        // serving and learning split the stages between them.
        assert!(
            named("serving").runs(stage) != named("learning").runs(stage),
            "{stage} is in exactly one of serving and learning"
        );
    }
}

#[test]
fn kafka_security_settings_are_checked_before_connecting() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // prod.toml without its password in the environment: named, not guessed.
    let e = Config::load_with_env(Some(&root.join("config/prod.toml")), Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kafka.properties.sasl.password")
            && e.contains("required with sasl.mechanism SCRAM-SHA-512"),
        "{e}"
    );
    let load = |pairs: &[(&str, &str)]| {
        Config::load_with_env(
            None,
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    };
    // Every problem at once; no value (they may be secrets) in the message.
    let e = load(&[
        ("MRREC__KAFKA__BROKERS", "k1:9092"),
        ("MRREC__KAFKA__PROPERTIES__SECURITY.PROTOCOL", "SASL_SSL"),
        ("MRREC__KAFKA__PROPERTIES__SASL.MECHANISM", "SCRAM-SHA-1"),
        ("MRREC__KAFKA__PROPERTIES__SASL.PASSWORD", "hunter2"),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("kafka.properties.sasl.mechanism"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let e = load(&[
        ("MRREC__KAFKA__BROKERS", "k1:9092"),
        ("MRREC__KAFKA__PROPERTIES__SECURITY.PROTOCOL", "TLS"),
        ("MRREC__KAFKA__PROPERTIES__SASL.PASSWORD", "hunter2"),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("kafka.properties.security.protocol"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // A complete SASL_SSL setting loads.
    load(&[
        ("MRREC__KAFKA__BROKERS", "k1:9092"),
        ("MRREC__KAFKA__PROPERTIES__SECURITY.PROTOCOL", "sasl_ssl"),
        ("MRREC__KAFKA__PROPERTIES__SASL.MECHANISM", "PLAIN"),
        ("MRREC__KAFKA__PROPERTIES__SASL.USERNAME", "mrrec"),
        ("MRREC__KAFKA__PROPERTIES__SASL.PASSWORD", "hunter2"),
    ])
    .unwrap();
}

#[test]
fn redis_tls_without_certificate_checks_is_refused() {
    let load = |url: &str, ca: &str| {
        Config::load_with_env(
            None,
            [
                ("MRREC__STORE__BACKEND".to_owned(), "redis".to_owned()),
                ("MRREC__STORE__URL".to_owned(), url.to_owned()),
                ("MRREC__STORE__CA_FILE".to_owned(), ca.to_owned()),
            ],
        )
    };
    let e = load("rediss://:pw@host:6380/0#insecure", "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("store.url") && e.contains("store.ca_file"),
        "{e}"
    );
    assert!(!e.contains("pw@"), "{e}");
    let e = load("redis://host:6379/0", "/etc/ca.pem")
        .unwrap_err()
        .to_string();
    assert!(e.contains("store.ca_file"), "{e}");
    load("rediss://:pw@host:6380/0", "/etc/ca.pem").unwrap();
}

#[test]
fn the_llm_api_key_comes_from_the_environment_and_is_never_shown() {
    let config =
        Config::load_with_env(None, env(&[("MRREC__LLM__API_KEY", "s3cret-token")])).unwrap();
    assert_eq!(config.llm.api_key, "s3cret-token");
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cret-token"), "{shown}");
    assert!(shown.contains("api_key: \"***\""), "{shown}");
    assert!(Config::defaults().llm.api_key.is_empty());
}
