//! `mrrec llm serve`: the policy behind mistral.rs's OpenAI-compatible routes.

use anyhow::{Context, Result};
use mrrec_config::Config;
use mrrec_llm::{EmbeddedLlm, EngineOptions, PolicyTarget};
use mrrec_stream::{Bootstrap, KafkaClients, Shutdown};
use std::sync::Arc;

/// `host:port` of an http(s) URL.
fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    (!authority.is_empty()).then_some(authority)
}

pub async fn serve(config: &Config, listen: Option<&str>, follow: bool) -> Result<()> {
    let listen = match listen {
        Some(listen) => listen.to_owned(),
        None => authority(&config.llm.url)
            .with_context(|| {
                format!(
                    "llm.url {:?} has no host:port; pass --listen",
                    config.llm.url
                )
            })?
            .to_owned(),
    };
    let dir = mrrec_policy::registry::resolve_model_dir(&config.llm.model_dir, &config.policy.dir)?;
    let llm = Arc::new(EmbeddedLlm::open(&dir, EngineOptions::from_config(config)).await?);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    mrrec_service::start_metrics(config)?;

    // The in-process broker is private to one process: nothing could announce
    // to it, so only a real cluster is followed.
    // A pinned version (llm.model_dir, a rollback) stays pinned.
    let mut follower = None;
    let pinned = !config.llm.model_dir.is_empty();
    if follow && pinned {
        tracing::info!(model_dir = %config.llm.model_dir, "llm.model_dir is pinned: not following mrrec.policy");
    } else if follow && !config.kafka.is_embedded() {
        let bootstrap = Bootstrap::resolve(config)?;
        let clients = KafkaClients::from_config(config, &bootstrap);
        let target: Arc<dyn PolicyTarget> = llm.clone();
        let prefix = config.topics.prefix.clone();
        let stop = shutdown.clone();
        let policy_dir = config.policy.dir.clone();
        follower = Some(tokio::spawn(async move {
            mrrec_llm::follow_policy_topic(
                &clients,
                &prefix,
                "llm-serve",
                &policy_dir,
                target,
                stop,
            )
            .await
        }));
    } else if follow {
        tracing::info!("kafka.brokers is embedded: not following mrrec.policy");
    }
    println!(
        "serving policy version {} from {} on http://{listen}/v1",
        llm.serving_version(),
        dir.display()
    );
    let stop = shutdown.clone();
    mrrec_llm::serve::serve(llm, listener, &config.llm.api_key, async move {
        stop.wait().await
    })
    .await?;
    shutdown.trigger();
    if let Some(follower) = follower {
        follower.await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_listen_address_comes_from_the_url() {
        assert_eq!(
            super::authority("http://127.0.0.1:1234/v1"),
            Some("127.0.0.1:1234")
        );
        assert_eq!(super::authority("https://llm:8080"), Some("llm:8080"));
        assert_eq!(super::authority("nonsense"), None);
    }
}
