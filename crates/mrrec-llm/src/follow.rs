//! Following `mrrec.policy`: every process that serves the policy (each
//! recommender with the embedded backend, `mrrec llm serve`) reads the whole
//! announcement topic itself — no consumer group, so every instance sees every
//! announcement — and switches when a newer version than the one it serves is
//! announced. A version that fails to load is logged and skipped: the
//! serving version stays. An unreadable announcement goes to the DLQ.

use crate::events::{AnnouncementRefused, PolicyLoadFailed};
use crate::{EmbeddedLlm, LlmError};
use async_trait::async_trait;
use mrrec_messages::{PolicyAnnouncement, Topic};
use mrrec_stream::{KafkaClients, Poison, Shutdown, TailFrom, TopicTail};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Something that serves a policy and can switch versions.
#[async_trait]
pub trait PolicyTarget: Send + Sync {
    fn serving_version(&self) -> u32;
    async fn switch_to(&self, dir: &Path) -> Result<u32, LlmError>;
}

#[async_trait]
impl PolicyTarget for EmbeddedLlm {
    fn serving_version(&self) -> u32 {
        EmbeddedLlm::serving_version(self)
    }
    async fn switch_to(&self, dir: &Path) -> Result<u32, LlmError> {
        EmbeddedLlm::switch_to(self, dir).await
    }
}

/// Why an announcement was not applied.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The announcement is not to be trusted (permanent: dead-lettered).
    #[error("refused: {0}")]
    Refused(String),
    /// A trusted version failed to load (the serving version stays).
    #[error(transparent)]
    Load(#[from] LlmError),
}

/// The directory an announcement may be loaded from: its path resolved,
/// when that is `policy_dir/vNNNN` for the announced version and passes the
/// model checks. The error says why not.
pub fn trusted_dir(
    announcement: &PolicyAnnouncement,
    policy_dir: &Path,
) -> Result<PathBuf, String> {
    let expected = mrrec_policy::PolicyRegistry::new(policy_dir).path(announcement.version);
    let announced = Path::new(&announcement.path);
    let resolved = std::fs::canonicalize(announced)
        .map_err(|e| format!("path {} cannot be resolved: {e}", announced.display()))?;
    let own = std::fs::canonicalize(&expected).map_err(|e| {
        format!(
            "version {} has no directory {} in policy.dir: {e}",
            announcement.version,
            expected.display()
        )
    })?;
    if resolved != own {
        return Err(format!(
            "path {} is not policy.dir's directory for version {} ({})",
            resolved.display(),
            announcement.version,
            own.display()
        ));
    }
    mrrec_policy::check_model_dir(&resolved)
        .map_err(|e| format!("{} is not a usable model: {e}", resolved.display()))?;
    Ok(resolved)
}

/// Applies one announcement: switches if it is newer than what `target`
/// serves and trusted ([`trusted_dir`]).
pub async fn apply_announcement(
    target: &dyn PolicyTarget,
    announcement: &PolicyAnnouncement,
    policy_dir: &Path,
) -> Result<bool, FollowError> {
    let serving = target.serving_version();
    if announcement.version <= serving {
        tracing::debug!(
            announced = announcement.version,
            serving,
            "policy announcement is not newer; ignored"
        );
        return Ok(false);
    }
    let dir = trusted_dir(announcement, policy_dir).map_err(FollowError::Refused)?;
    target.switch_to(&dir).await?;
    Ok(true)
}

/// Reads `mrrec.policy` from the beginning until `shutdown`, switching
/// `target` to each newer announced version found under `policy_dir`.
/// `stage` names this process in DLQ records. Nothing stops it but its
/// shutdown: it retries opening the topic (the loaded version serves
/// meanwhile), and a bad announcement is dead-lettered while it goes on.
pub async fn follow_policy_topic(
    clients: &KafkaClients,
    prefix: &str,
    stage: &str,
    policy_dir: &Path,
    target: Arc<dyn PolicyTarget>,
    shutdown: Shutdown,
) {
    let topic = Topic::Policy.name(prefix);
    let dlq = Topic::Dlq.name(prefix);
    let mut backoff = mrrec_stream::Backoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    );
    let tail = loop {
        let opened = tokio::select! {
            _ = shutdown.wait() => return,
            opened = TopicTail::open(clients, &topic, &dlq, stage, TailFrom::Beginning) => opened,
        };
        match opened {
            Ok(tail) => break tail,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "cannot follow policy announcements yet; serving the loaded version meanwhile");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    crate::describe_metrics();
    tracing::info!(%topic, "following policy announcements");
    loop {
        let tailed = tokio::select! {
            _ = shutdown.wait() => return,
            tailed = tail.next::<PolicyAnnouncement>() => tailed,
        };
        let announcement = &tailed.message;
        match apply_announcement(target.as_ref(), announcement, policy_dir).await {
            Ok(_) => {}
            Err(FollowError::Load(e)) => PolicyLoadFailed {
                announcement,
                error: &e,
                serving: target.serving_version(),
            }
            .emit(),
            Err(refused @ FollowError::Refused(_)) => {
                let reason = refused.to_string();
                AnnouncementRefused {
                    announcement,
                    reason: &reason,
                    serving: target.serving_version(),
                }
                .emit();
                let poison = Poison {
                    kind: "refused",
                    reason,
                };
                tail.dead_letter(&tailed.meta, &tailed.payload, poison)
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Serving;

    #[async_trait]
    impl PolicyTarget for Serving {
        fn serving_version(&self) -> u32 {
            0
        }
        async fn switch_to(&self, dir: &Path) -> Result<u32, LlmError> {
            panic!("nothing to switch to: {}", dir.display())
        }
    }

    /// With no broker to open `mrrec.policy` on, the follower keeps trying
    /// (it used to give up, leaving the stage without hot swap) and stops
    /// only at its shutdown, at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_follower_waits_for_the_policy_topic_until_its_shutdown() {
        // Nothing listens on port 1.
        let clients = KafkaClients::new("127.0.0.1:1", &Default::default());
        let shutdown = Shutdown::new();
        let follower = {
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let dir = std::env::temp_dir();
                follow_policy_topic(&clients, "mrrec.", "test", &dir, Arc::new(Serving), stop).await
            })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!follower.is_finished(), "the follower gave up");
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(2), follower)
            .await
            .expect("it stops at its shutdown")
            .unwrap();
    }
}
