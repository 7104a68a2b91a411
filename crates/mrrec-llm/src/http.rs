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
#[derive(Debug, Clone)]
pub struct HttpLlm {
    client: reqwest::Client,
    endpoint: String,
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
        })
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
        let response = self
            .client
            .post(&self.endpoint)
            .json(&Self::body(&request))
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
            body.truncate(2000);
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
