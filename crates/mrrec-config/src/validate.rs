//! Semantic checks that types alone cannot express.

use crate::{Config, ConfigIssue, LlmBackend, StoreBackend};

pub(crate) fn validate(config: &Config) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut fail = |key: &str, message: String| {
        issues.push(ConfigIssue {
            key: key.into(),
            message,
        })
    };

    let kafka = &config.kafka;
    if !kafka.is_embedded() {
        let brokers: Vec<&str> = kafka.brokers.split(',').map(str::trim).collect();
        if brokers.iter().any(|b| !is_host_port(b)) {
            fail(
                "kafka.brokers",
                format!(
                    "expected host:port[,host:port…] or `embedded`, got {:?}",
                    kafka.brokers
                ),
            );
        }
    }
    if !is_kafka_name(&kafka.group_prefix, true) {
        fail(
            "kafka.group_prefix",
            "may only hold letters, digits, `.`, `_` and `-`".into(),
        );
    }
    for key in kafka.properties.keys() {
        if ["bootstrap.servers", "group.id", "enable.auto.commit"].contains(&key.as_str()) {
            fail(
                &format!("kafka.properties.{key}"),
                "is set by mrrec itself and cannot be overridden".into(),
            );
        }
    }

    for (key, message) in kafka_security_issues(&kafka.properties) {
        fail(&format!("kafka.properties.{key}"), message);
    }

    let topics = &config.topics;
    if !is_kafka_name(&topics.prefix, true) || topics.prefix.len() > 200 {
        fail(
            "topics.prefix",
            "may only hold letters, digits, `.`, `_` and `-` (at most 200)".into(),
        );
    }
    if !(1..=10_000).contains(&topics.partitions) {
        fail(
            "topics.partitions",
            format!("{} is not between 1 and 10000", topics.partitions),
        );
    }
    if !(1..=32).contains(&topics.replication) {
        fail(
            "topics.replication",
            format!("{} is not between 1 and 32", topics.replication),
        );
    }

    match config.store.backend {
        StoreBackend::Redis => {
            if !(config.store.url.starts_with("redis://")
                || config.store.url.starts_with("rediss://")
                || config.store.url.starts_with("redis+unix://"))
            {
                fail(
                    "store.url",
                    "must start with redis://, rediss:// or redis+unix://".into(),
                );
            }
            if config.store.url.contains("#insecure") {
                fail(
                    "store.url",
                    "#insecure turns off the server certificate check; trust a private CA with store.ca_file instead".into(),
                );
            }
            if !config.store.ca_file.is_empty() && !config.store.url.starts_with("rediss://") {
                fail(
                    "store.ca_file",
                    "is only used with TLS: store.url must start with rediss://".into(),
                );
            }
        }
        StoreBackend::Embedded => {
            if config.store.path.as_os_str().is_empty() {
                fail("store.path", "must not be empty".into());
            }
        }
    }
    if config.index.path.as_os_str().is_empty() {
        fail("index.path", "must not be empty".into());
    }
    if config.llm.backend == LlmBackend::Http
        && !(config.llm.url.starts_with("http://") || config.llm.url.starts_with("https://"))
    {
        fail("llm.url", "must start with http:// or https://".into());
    }
    if !(1..=1024).contains(&config.llm.max_batch_sequences) {
        fail(
            "llm.max_batch_sequences",
            format!(
                "{} is not between 1 and 1024",
                config.llm.max_batch_sequences
            ),
        );
    }
    if config.agent.max_steps > 16 {
        fail(
            "agent.max_steps",
            format!("{} is over the limit of 16", config.agent.max_steps),
        );
    }
    if !(1..=64).contains(&config.agent.group_size) {
        fail(
            "agent.group_size",
            format!("{} is not between 1 and 64", config.agent.group_size),
        );
    }
    let agent = &config.agent;
    if agent.min_steps > agent.max_steps {
        fail(
            "agent.min_steps",
            format!(
                "{} is more than agent.max_steps ({})",
                agent.min_steps, agent.max_steps
            ),
        );
    }
    if !(agent.temperature.is_finite() && (0.0..=5.0).contains(&agent.temperature)) {
        fail(
            "agent.temperature",
            format!("{} is not between 0 and 5", agent.temperature),
        );
    } else if agent.group_size > 1 && agent.temperature == 0.0 {
        fail(
            "agent.temperature",
            format!(
                "must be > 0 when agent.group_size is {} (greedy samples are identical and teach nothing)",
                agent.group_size
            ),
        );
    }
    if !(agent.top_p.is_finite() && agent.top_p > 0.0 && agent.top_p <= 1.0) {
        fail("agent.top_p", format!("{} is not in (0, 1]", agent.top_p));
    }
    for (key, value, max) in [
        ("agent.memory_per_step", agent.memory_per_step, 20),
        ("agent.max_think_chars", agent.max_think_chars, 2000),
        ("agent.max_query_chars", agent.max_query_chars, 2000),
        ("agent.max_profile_chars", agent.max_profile_chars, 2000),
        ("agent.max_turn_tokens", agent.max_turn_tokens, 8192),
        ("agent.max_input_chars", agent.max_input_chars, 16384),
    ] {
        if !(1..=max).contains(&value) {
            fail(key, format!("{value} is not between 1 and {max}"));
        }
    }
    let recommend = &config.recommend;
    if !(1..=4096).contains(&recommend.concurrency) {
        fail(
            "recommend.concurrency",
            format!("{} is not between 1 and 4096", recommend.concurrency),
        );
    }
    if recommend.timeout_ms == 0 {
        fail("recommend.timeout_ms", "must be positive".into());
    }
    if !(1..=100_000).contains(&recommend.candidates) {
        fail(
            "recommend.candidates",
            format!("{} is not between 1 and 100000", recommend.candidates),
        );
    }
    if recommend.recent_items > 1000 {
        fail(
            "recommend.recent_items",
            format!("{} is over the limit of 1000", recommend.recent_items),
        );
    }
    for (key, weight) in [
        ("recommend.weight_bm25", recommend.weight_bm25),
        ("recommend.weight_category", recommend.weight_category),
        (
            "recommend.weight_collaborative",
            recommend.weight_collaborative,
        ),
        ("recommend.weight_popularity", recommend.weight_popularity),
    ] {
        if !(weight.is_finite() && weight >= 0.0) {
            fail(key, format!("{weight} must be a finite number ≥ 0"));
        }
    }
    if recommend.refresh_ms == 0 {
        fail("recommend.refresh_ms", "must be positive".into());
    }
    if config.reward.window_ms == 0 {
        fail("reward.window_ms", "must be positive".into());
    }
    if config.train.every_rewards == 0 {
        fail("train.every_rewards", "must be positive".into());
    }
    let train = &config.train;
    if train.every_ms == 0 {
        fail("train.every_ms", "must be positive".into());
    }
    for (key, value, low, high) in [
        ("train.learning_rate", train.learning_rate, 0.0, 1.0),
        ("train.clip_epsilon", train.clip_epsilon, 0.0, 1.0),
        ("train.max_grad_norm", train.max_grad_norm, 0.0, 1e6),
    ] {
        if !(value.is_finite() && value > low && value <= high) {
            fail(key, format!("{value} is not in ({low}, {high}]"));
        }
    }
    for (key, value, high) in [
        ("train.kl_coef", train.kl_coef, 100.0),
        ("train.weight_decay", train.weight_decay, 1.0),
        ("train.max_regression", train.max_regression, 1e6),
    ] {
        if !(value.is_finite() && (0.0..=high).contains(&value)) {
            fail(key, format!("{value} is not between 0 and {high}"));
        }
    }
    if !(train.holdout_fraction.is_finite() && (0.0..1.0).contains(&train.holdout_fraction)) {
        fail(
            "train.holdout_fraction",
            format!("{} is not in [0, 1)", train.holdout_fraction),
        );
    }
    for (key, value, low, high) in [
        ("train.epochs", train.epochs, 1, 100),
        ("train.minibatch", train.minibatch, 1, 1_000_000),
        ("train.chunk_tokens", train.chunk_tokens, 64, 10_000_000),
        ("train.max_tokens", train.max_tokens, 16, 1_000_000),
    ] {
        if !(low..=high).contains(&value) {
            fail(key, format!("{value} is not between {low} and {high}"));
        }
    }
    if config.policy.dir.as_os_str().is_empty() {
        fail("policy.dir", "must not be empty".into());
    }
    let listen = config.metrics.listen.trim();
    if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
        fail(
            "metrics.listen",
            format!("expected ip:port (e.g. 127.0.0.1:9464) or empty, got {listen:?}"),
        );
    }

    let stream = &config.stream;
    let distill = &config.distill;
    for (section, records, ms) in [
        ("stream", stream.batch_max_records, stream.batch_max_ms),
        ("distill", distill.batch_max_records, distill.batch_max_ms),
    ] {
        if !(1..=100_000).contains(&records) {
            fail(
                &format!("{section}.batch_max_records"),
                format!("{records} is not between 1 and 100000"),
            );
        }
        if !(1..=60_000).contains(&ms) {
            fail(
                &format!("{section}.batch_max_ms"),
                format!("{ms} is not between 1 and 60000"),
            );
        }
    }
    if !(1024..=(1usize << 32)).contains(&stream.batch_max_bytes) {
        fail(
            "stream.batch_max_bytes",
            format!(
                "{} is not between 1024 and 4294967296",
                stream.batch_max_bytes
            ),
        );
    }
    if !(1..=1_000_000).contains(&distill.batch_max_users) {
        fail(
            "distill.batch_max_users",
            format!("{} is not between 1 and 1000000", distill.batch_max_users),
        );
    }
    if !(1..=1_000_000).contains(&distill.max_behavior_entries) {
        fail(
            "distill.max_behavior_entries",
            format!(
                "{} is not between 1 and 1000000",
                distill.max_behavior_entries
            ),
        );
    }
    // A state remembers its latest 20 liked items (mrrec_memory::RECENT_POSITIVE).
    if !(1..=20).contains(&distill.co_occurrence_window) {
        fail(
            "distill.co_occurrence_window",
            format!("{} is not between 1 and 20", distill.co_occurrence_window),
        );
    }
    if distill.cache_mb > 1 << 20 {
        fail(
            "distill.cache_mb",
            format!("{} is more than 1048576 (1 TiB)", distill.cache_mb),
        );
    }
    if stream.backoff_initial_ms == 0 || stream.backoff_initial_ms > stream.backoff_max_ms {
        fail(
            "stream.backoff_initial_ms",
            "must be positive and at most stream.backoff_max_ms".into(),
        );
    }
    if stream.shutdown_timeout_ms == 0 {
        fail("stream.shutdown_timeout_ms", "must be positive".into());
    }
    issues
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn is_kafka_name(s: &str, allow_empty: bool) -> bool {
    (allow_empty || !s.is_empty())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// librdkafka's security settings that would otherwise fail only when the
/// first connection is tried (or, for a missing password, as an
/// authentication error that does not say which setting is missing).
/// Values are never echoed: they may be secrets.
fn kafka_security_issues(
    properties: &std::collections::BTreeMap<String, String>,
) -> Vec<(&'static str, String)> {
    let mut issues = Vec::new();
    let get = |key: &str| properties.get(key).map(|v| v.trim());
    let protocol = get("security.protocol").map(str::to_ascii_uppercase);
    if let Some(protocol) = &protocol {
        if !["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"].contains(&protocol.as_str()) {
            issues.push((
                "security.protocol",
                "expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL".into(),
            ));
        }
    }
    let sasl = protocol.as_deref().is_some_and(|p| p.starts_with("SASL_"));
    let mechanism = get("sasl.mechanism")
        .or_else(|| get("sasl.mechanisms"))
        .map(str::to_ascii_uppercase);
    if sasl {
        match mechanism.as_deref() {
            None => issues.push((
                "sasl.mechanism",
                "is required with a SASL security.protocol (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI or OAUTHBEARER)".into(),
            )),
            Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {
                for key in ["sasl.username", "sasl.password"] {
                    if get(key).is_none_or(str::is_empty) {
                        issues.push((
                            key,
                            format!(
                                "is required with sasl.mechanism {}",
                                mechanism.as_deref().unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
            Some("GSSAPI" | "OAUTHBEARER") => {}
            Some(_) => issues.push((
                "sasl.mechanism",
                "expected PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI or OAUTHBEARER".into(),
            )),
        }
    } else if mechanism.is_some() || get("sasl.password").is_some() {
        issues.push((
            "security.protocol",
            "SASL settings are given but security.protocol is not SASL_PLAINTEXT or SASL_SSL, so they would be ignored".into(),
        ));
    }
    issues
}
