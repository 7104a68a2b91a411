//! An in-process Kafka (librdkafka's mock cluster) for `mrrec demo` and tests
//! that want no external service. It is not `Send`, so it lives on its own thread.

use crate::StreamError;
use mrrec_messages::Topic;
use rdkafka::mocking::MockCluster;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// A running mock cluster with every mrrec topic created; stops when dropped.
/// Nothing is persisted, and each partition keeps at most a few MiB.
pub struct EmbeddedBroker {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a one-broker mock cluster and creates the topics of DESIGN §2.
    pub fn start(prefix: &str, partitions: i32) -> Result<EmbeddedBroker, StreamError> {
        Self::start_prefixes(&[(prefix, partitions)])
    }

    /// [`Self::start`] with the topics of DESIGN §2 under each of several
    /// prefixes, each with its own partition count (`mrrec.policy` always 1).
    pub fn start_prefixes(prefixes: &[(&str, i32)]) -> Result<EmbeddedBroker, StreamError> {
        let topics: Vec<(String, i32)> = prefixes
            .iter()
            .flat_map(|(prefix, partitions)| {
                Topic::ALL.iter().map(move |t| {
                    let n = if t.single_partition() { 1 } else { *partitions };
                    (t.name(prefix), n)
                })
            })
            .collect();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mrrec-embedded-broker".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for (name, n) in &topics {
                    if let Err(e) = cluster.create_topic(name, *n, 1) {
                        let _ = ready_tx.send(Err(format!("creating {name}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Blocks until the handle is dropped (sender gone or stop sent).
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .map_err(|e| StreamError::Embedded(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| StreamError::Embedded("broker thread died".into()))?
            .map_err(StreamError::Embedded)?;
        tracing::info!(%bootstrap, "embedded broker started");
        Ok(EmbeddedBroker {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
