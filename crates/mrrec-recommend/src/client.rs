//! Asking through the topics: produce a request to `mrrec.requests` and wait
//! for its response on `mrrec.responses` (matched by request_id). Used by
//! `mrrec recommend` and `mrrec bench recommend`; any application can do
//! the same with its own Kafka client.

use mrrec_messages::{encode, Request, Response, Topic};
use mrrec_stream::{KafkaClients, OutgoingRecord, Publisher, TailFrom, TopicTail};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A response and when it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub response: Response,
    pub at: Instant,
}

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Received>>>>;

/// Sends requests and hands each its response.
pub struct RecommendClient {
    publisher: Publisher,
    requests_topic: String,
    waiting: Waiting,
    reader: tokio::task::JoinHandle<()>,
}

/// Why asking failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Tail(#[from] mrrec_stream::TailError),
    #[error("request: {0}")]
    Message(#[from] mrrec_messages::MessageError),
    #[error("no response to {request_id} within {waited_ms} ms: is a recommend stage (`mrrec run --stage recommend`) running against this cluster?")]
    Timeout { request_id: String, waited_ms: u128 },
}

impl RecommendClient {
    /// Starts reading `mrrec.responses` from its current end, so only
    /// responses to requests sent from now on are seen. A response that
    /// does not decode goes to the DLQ.
    pub async fn connect(clients: &KafkaClients, prefix: &str) -> Result<Self, ClientError> {
        let clients = crate::low_latency(clients);
        let tail = TopicTail::open(
            &clients,
            &Topic::Responses.name(prefix),
            &Topic::Dlq.name(prefix),
            "recommend-client",
            TailFrom::End,
        )
        .await?;
        let waiting: Waiting = Arc::default();
        let dispatch = waiting.clone();
        let reader = tokio::spawn(async move {
            loop {
                let tailed = tail.next::<Response>().await;
                let at = Instant::now();
                let response = tailed.message;
                let sender = dispatch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&response.request_id);
                if let Some(sender) = sender {
                    let _ = sender.send(Received { response, at });
                }
            }
        });
        Ok(Self {
            publisher: Publisher::new(&clients, "recommend-client")?,
            requests_topic: Topic::Requests.name(prefix),
            waiting,
            reader,
        })
    }

    /// Waits for a response to `request_id` (sent by someone else, e.g. as
    /// raw bytes).
    pub fn expect(&self, request_id: &str) -> oneshot::Receiver<Received> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id.to_owned(), tx);
        rx
    }

    /// Sends `request`; the receiver gets its response.
    pub async fn send(
        &self,
        request: &Request,
    ) -> Result<oneshot::Receiver<Received>, ClientError> {
        let payload = encode(request)?;
        let rx = self.expect(&request.request_id);
        let record = OutgoingRecord {
            topic: self.requests_topic.clone(),
            key: Some(request.user_id.clone().into_bytes()),
            payload,
        };
        if let Err((e, _)) = self.publisher.publish_all(vec![record]).await {
            self.forget(&request.request_id);
            return Err(e.into());
        }
        Ok(rx)
    }

    /// Sends `request` and waits up to `timeout` for its response.
    pub async fn ask(&self, request: &Request, timeout: Duration) -> Result<Received, ClientError> {
        let started = Instant::now();
        let rx = self.send(request).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(received)) => Ok(received),
            _ => {
                self.forget(&request.request_id);
                Err(ClientError::Timeout {
                    request_id: request.request_id.clone(),
                    waited_ms: started.elapsed().as_millis(),
                })
            }
        }
    }

    /// Stops waiting for `request_id`.
    pub fn forget(&self, request_id: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(request_id);
    }
}

impl Drop for RecommendClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
