//! `mrrec recommend`: one request through the topics, printed.

use anyhow::{Context, Result};
use mrrec_config::Config;
use mrrec_memory::MemoryStore;
use mrrec_messages::{Request, Response};
use mrrec_recommend::RecommendClient;
use mrrec_store::AnyStore;
use mrrec_stream::{Bootstrap, KafkaClients};
use std::time::Duration;

/// `mrrec recommend --user U [--query Q] [--k K]`: one request through the
/// topics. With `kafka.brokers = embedded` the stage runs in this process.
pub async fn ask(
    config: &Config,
    user: &str,
    query: Option<&str>,
    k: u32,
    wait: Duration,
) -> Result<()> {
    let bootstrap = Bootstrap::resolve(config).context("starting the broker connection")?;
    let clients = KafkaClients::from_config(config, &bootstrap);
    let memory = mrrec_service::open_store(config).await?;
    let running = if config.kafka.is_embedded() {
        Some(mrrec_recommend::start(config, &clients, memory.clone(), false).await?)
    } else {
        None
    };
    let client = RecommendClient::connect(&clients, &config.topics.prefix).await?;
    let request = Request {
        request_id: format!("cli-{}-{}", std::process::id(), mrrec_stream::now_ms()),
        user_id: user.to_owned(),
        query: query.map(str::to_owned),
        k,
        exclude_seen: true,
        ts: mrrec_stream::now_ms(),
    };
    let answer = client.ask(&request, wait).await;
    if let Some(running) = running {
        running.stop().await?;
    }
    let response = answer?.response;
    print_response(&response, &memory).await?;
    if let Some(error) = &response.error {
        anyhow::bail!("the request was answered with an error: {error}");
    }
    Ok(())
}

async fn print_response(response: &Response, memory: &MemoryStore<AnyStore>) -> Result<()> {
    let ids: Vec<String> = response.items.iter().map(|i| i.item_id.clone()).collect();
    let titles = memory.load_items(&ids).await.unwrap_or_default();
    println!(
        "request {} for user {} · policy v{:04} · {:.1} ms",
        response.request_id, response.user_id, response.policy_version, response.latency_ms
    );
    println!("profile: {}", response.profile);
    println!("items:");
    for (rank, item) in response.items.iter().enumerate() {
        let title = titles
            .get(&item.item_id)
            .map(|i| i.title.as_str())
            .unwrap_or("(not in the catalog)");
        println!(
            "  {:>2}. {:<8} {:<50} {:.4}",
            rank + 1,
            item.item_id,
            title,
            item.score
        );
    }
    println!("trace:");
    for step in &response.steps {
        let kind = step.kind.as_str();
        if step.memory_ids.is_empty() {
            println!("  {kind:<8} {}", step.text);
        } else {
            println!("  {kind:<8} [{}] {}", step.memory_ids.join(", "), step.text);
        }
    }
    if !response.memory_ids.is_empty() {
        println!("memory used: {}", response.memory_ids.join(", "));
    }
    Ok(())
}
