//! The http backend: any OpenAI-compatible mistral.rs server (`mrrec llm
//! serve`, or `mistralrs serve`), through `/v1/chat/completions` with
//! mistral.rs's `grammar` extension. The serving version is read from the
//! model name the server answers with (its directory, `…/vNNNN`).

use crate::{
    validate_request, version_from_model_name, Completion, Generation, GenerationRequest, Llm,
    LlmError,
};
use async_trait::async_trait;
use serde::Deserialize;
use std::time::{Duration, Instant};

/// A client of one server.
#[derive(Clone)]
pub struct HttpLlm {
    client: reqwest::Client,
    endpoint: String,
    /// Sent as `Authorization: Bearer …` (`llm.api_key`); never shown.
    api_key: Option<String>,
}

impl std::fmt::Debug for HttpLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpLlm")
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

#[derive(Deserialize)]
struct ChatResponse {
    model: String,
    choices: Vec<ChatChoice>,
    usage: ChatUsage,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChatChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChatUsage {
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl HttpLlm {
    /// `base_url` is the server's OpenAI base, e.g. `http://127.0.0.1:1234/v1`.
    pub fn new(base_url: &str) -> Result<Self, LlmError> {
        let base = base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(LlmError::BadRequest(format!(
                "llm.url {base_url:?} must start with http:// or https://"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| LlmError::Transport(e.to_string()))?;
        Ok(Self {
            client,
            endpoint: format!("{base}/chat/completions"),
            api_key: None,
        })
    }

    /// Sends `key` as a bearer token on every call (`llm.api_key`; empty:
    /// none).
    pub fn with_api_key(mut self, key: &str) -> Self {
        self.api_key = (!key.is_empty()).then(|| key.to_owned());
        self
    }

    fn body(request: &GenerationRequest) -> serde_json::Value {
        let messages: Vec<serde_json::Value> = request
            .messages
            .iter()
            .map(|m| serde_json::json!({ "role": m.role.as_str(), "content": m.content }))
            .collect();
        let mut body = serde_json::json!({
            "model": "default",
            "messages": messages,
            "max_tokens": request.sampling.max_tokens,
            "n": request.n,
        });
        if request.sampling.temperature == 0.0 {
            body["top_k"] = 1.into();
        } else {
            body["temperature"] = request.sampling.temperature.into();
            if request.sampling.top_p < 1.0 {
                body["top_p"] = request.sampling.top_p.into();
            }
        }
        if let Some(grammar) = &request.grammar {
            body["grammar"] = serde_json::json!({ "type": "lark", "value": grammar });
        }
        body
    }
}

#[async_trait]
impl Llm for HttpLlm {
    async fn generate(&self, request: GenerationRequest) -> Result<Generation, LlmError> {
        validate_request(&request)?;
        let started = Instant::now();
        let mut call = self.client.post(&self.endpoint).json(&Self::body(&request));
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let response = call
            .send()
            .await
            .map_err(|e| LlmError::Transport(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| LlmError::Transport(e.to_string()))?;
        if !status.is_success() {
            let mut body = text;
            mrrec_messages::truncate_at_char(&mut body, 2000);
            return Err(LlmError::Status {
                status: status.as_u16(),
                body,
            });
        }
        let parsed: ChatResponse = serde_json::from_str(&text).map_err(|e| {
            LlmError::Transport(format!("unreadable answer from {}: {e}", self.endpoint))
        })?;
        Ok(Generation {
            completions: parsed
                .choices
                .into_iter()
                .map(|c| Completion {
                    text: c.message.content.unwrap_or_default(),
                    finish_reason: c.finish_reason.unwrap_or_default(),
                })
                .collect(),
            policy_version: version_from_model_name(&parsed.model),
            model: parsed.model,
            prompt_tokens: parsed.usage.prompt_tokens,
            completion_tokens: parsed.usage.completion_tokens,
            elapsed: started.elapsed(),
        })
    }

    fn backend(&self) -> &'static str {
        "http"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChatMessage, Role, Sampling};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every connection with `status` and `body`, and
    /// hands back the request it read.
    async fn answering(status: &str, body: String) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let status = status.to_owned();
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 64 * 1024];
            let n = socket.read(&mut request).await.unwrap();
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request[..n]).into_owned()
        });
        (url, served)
    }

    fn request() -> GenerationRequest {
        GenerationRequest {
            messages: vec![ChatMessage {
                role: Role::User,
                content: "hello".into(),
            }],
            sampling: Sampling {
                temperature: 0.0,
                top_p: 1.0,
                max_tokens: 8,
            },
            n: 1,
            grammar: None,
        }
    }

    #[tokio::test]
    async fn an_error_body_of_multibyte_text_is_cut_between_characters() {
        // 3,000 bytes of three-byte characters: byte 2,000 is inside one.
        let (url, served) = answering("500 Internal Server Error", "€".repeat(1000)).await;
        let llm = HttpLlm::new(&url).unwrap().with_api_key("token-1");
        match llm.generate(request()).await {
            Err(LlmError::Status { status, body }) => {
                assert_eq!(status, 500);
                assert_eq!(body, "€".repeat(666));
            }
            other => panic!("expected a status error, got {other:?}"),
        }
        let sent = served.await.unwrap().to_ascii_lowercase();
        assert!(sent.contains("authorization: bearer token-1"), "{sent}");
        assert!(!format!("{llm:?}").contains("token-1"));
    }
}
