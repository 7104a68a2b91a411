//! `mrrec bench recommend --llm-only`: the cost of our LLM wrapper. The same
//! greedy, grammar-constrained call on the same model and prompt, once as a
//! bare mistral.rs SDK call and once through [`mrrec_llm::Llm`], alternating
//! which goes first; reports mean and p50 per call and tokens/s of each side,
//! and `overhead` = wrapper / bare − 1 (DESIGN §12).

use crate::conformance::{agent_prompt, first_turn_grammar};
use crate::{EmbeddedLlm, EngineOptions, GenerationRequest, Llm, LlmError, Sampling};
use std::path::Path;
use std::time::Instant;

/// Why the comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--calls must be at least 1")]
    NoCalls,
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error("the bare SDK call: {0}")]
    Sdk(String),
    #[error("the two paths generated different text ({bare:?} vs {wrapper:?}); the comparison would be unfair")]
    Diverged { bare: String, wrapper: String },
}

/// What `bench recommend --llm-only` measured (its JSON line, DESIGN §12).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Overhead {
    pub calls: usize,
    pub completion_tokens_per_call: usize,
    pub bare_ms: f64,
    pub wrapper_ms: f64,
    pub bare_p50_ms: f64,
    pub wrapper_p50_ms: f64,
    pub bare_tokens_per_s: f64,
    pub wrapper_tokens_per_s: f64,
    /// wrapper / bare − 1.
    pub overhead: f64,
}

impl std::fmt::Display for Overhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} calls each: bare {:.3} ms (p50 {:.3}), wrapper {:.3} ms (p50 {:.3}), overhead {:+.2}%",
            self.calls,
            self.bare_ms,
            self.bare_p50_ms,
            self.wrapper_ms,
            self.wrapper_p50_ms,
            self.overhead * 100.0
        )
    }
}

const MAX_TOKENS: usize = 64;

struct Side {
    ms: Vec<f64>,
    tokens: usize,
}

impl Side {
    fn mean(&self) -> f64 {
        self.ms.iter().sum::<f64>() / self.ms.len() as f64
    }
    fn p50(&self) -> f64 {
        let mut sorted = self.ms.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }
    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / (self.ms.iter().sum::<f64>() / 1000.0)
    }
}

/// Compares `calls` calls each, bare and wrapped, on the model in `dir`;
/// `on_call` is called after each pair (for progress).
pub async fn wrapper_overhead(
    dir: &Path,
    calls: usize,
    on_call: impl Fn(),
) -> Result<Overhead, BenchError> {
    if calls == 0 {
        return Err(BenchError::NoCalls);
    }
    let llm = EmbeddedLlm::open(dir, EngineOptions::default()).await?;
    let request = GenerationRequest {
        messages: agent_prompt("a funny movie for tonight"),
        grammar: Some(first_turn_grammar()),
        sampling: Sampling::greedy(MAX_TOKENS),
        n: 1,
    };
    let model_id = llm.lease().model_id.clone();
    let sdk = llm.sdk_model();

    // The bare call, written directly against the mistral.rs SDK.
    let bare = || async {
        let mut builder = mistralrs::RequestBuilder::new();
        for message in &request.messages {
            let role = match message.role {
                crate::Role::System => mistralrs::TextMessageRole::System,
                crate::Role::User => mistralrs::TextMessageRole::User,
                crate::Role::Assistant => mistralrs::TextMessageRole::Assistant,
            };
            builder = builder.add_message(role, &message.content);
        }
        let builder = builder
            .set_sampling(mistralrs::SamplingParams {
                top_k: Some(1),
                max_len: Some(MAX_TOKENS),
                ..mistralrs::SamplingParams::neutral()
            })
            .set_constraint(mistralrs::Constraint::Lark(first_turn_grammar()));
        let t = Instant::now();
        let response = sdk
            .send_chat_request_with_model(builder, Some(&model_id))
            .await
            .map_err(|e| BenchError::Sdk(e.to_string()))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let text = response.choices[0]
            .message
            .content
            .clone()
            .unwrap_or_default();
        Ok::<_, BenchError>((ms, response.usage.completion_tokens, text))
    };
    let wrapped = || async {
        let t = Instant::now();
        let generation = llm.generate(request.clone()).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        Ok::<_, BenchError>((
            ms,
            generation.completion_tokens,
            generation.completions[0].text.clone(),
        ))
    };

    // Warm up both paths and check they do the same work.
    for _ in 0..5 {
        let (_, bare_tokens, bare_text) = bare().await?;
        let (_, ours_tokens, ours_text) = wrapped().await?;
        if bare_text != ours_text || bare_tokens != ours_tokens {
            return Err(BenchError::Diverged {
                bare: bare_text,
                wrapper: ours_text,
            });
        }
    }
    let (mut bare_side, mut ours_side) = (
        Side {
            ms: Vec::new(),
            tokens: 0,
        },
        Side {
            ms: Vec::new(),
            tokens: 0,
        },
    );
    for i in 0..calls {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_bare in order {
            let (ms, tokens, _) = if is_bare {
                bare().await?
            } else {
                wrapped().await?
            };
            let side = if is_bare {
                &mut bare_side
            } else {
                &mut ours_side
            };
            side.ms.push(ms);
            side.tokens += tokens;
        }
        on_call();
    }
    let overhead = ours_side.mean() / bare_side.mean() - 1.0;
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    Ok(Overhead {
        calls,
        completion_tokens_per_call: ours_side.tokens / calls,
        bare_ms: round(bare_side.mean()),
        wrapper_ms: round(ours_side.mean()),
        bare_p50_ms: round(bare_side.p50()),
        wrapper_p50_ms: round(ours_side.p50()),
        bare_tokens_per_s: bare_side.tokens_per_s().round(),
        wrapper_tokens_per_s: ours_side.tokens_per_s().round(),
        overhead: (overhead * 10_000.0).round() / 10_000.0,
    })
}
