//! `mrrec bench recommend --llm-only`: the cost of our LLM wrapper. The same
//! greedy, grammar-constrained call on the same model and prompt, once as a
//! bare mistral.rs SDK call and once through [`mrrec_llm::Llm`], alternating
//! which goes first; reports mean and p50 per call and tokens/s of each side,
//! and `overhead` = wrapper / bare − 1 (DESIGN §12).

use anyhow::{bail, Context, Result};
use mrrec_config::Config;
use mrrec_llm::conformance::{agent_prompt, first_turn_grammar};
use mrrec_llm::{EmbeddedLlm, EngineOptions, GenerationRequest, Llm, Sampling};
use std::time::Instant;

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

pub async fn llm_only(config: &Config, calls: usize) -> Result<()> {
    if calls == 0 {
        bail!("--calls must be at least 1");
    }
    let (dir, _tmp) = mrrec_inprocess::bench::model_dir_for(config, &[])?;
    let llm = EmbeddedLlm::open(&dir, EngineOptions::default())
        .await
        .with_context(|| format!("loading {}", dir.display()))?;
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
                mrrec_llm::Role::System => mistralrs::TextMessageRole::System,
                mrrec_llm::Role::User => mistralrs::TextMessageRole::User,
                mrrec_llm::Role::Assistant => mistralrs::TextMessageRole::Assistant,
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
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let text = response.choices[0]
            .message
            .content
            .clone()
            .unwrap_or_default();
        anyhow::Ok((ms, response.usage.completion_tokens, text))
    };
    let wrapped = || async {
        let t = Instant::now();
        let generation = llm.generate(request.clone()).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        anyhow::Ok((
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
            bail!("the two paths generated different text ({bare_text:?} vs {ours_text:?}); the comparison would be unfair");
        }
    }
    let progress = indicatif::ProgressBar::new(calls as u64);
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
        progress.inc(1);
    }
    progress.finish_and_clear();
    let overhead = ours_side.mean() / bare_side.mean() - 1.0;
    eprintln!(
        "{calls} calls each on {}: bare {:.3} ms (p50 {:.3}), wrapper {:.3} ms (p50 {:.3}), overhead {:+.2}%",
        dir.display(),
        bare_side.mean(),
        bare_side.p50(),
        ours_side.mean(),
        ours_side.p50(),
        overhead * 100.0
    );
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "calls": calls,
            "completion_tokens_per_call": ours_side.tokens / calls,
            "bare_ms": round(bare_side.mean()),
            "wrapper_ms": round(ours_side.mean()),
            "bare_p50_ms": round(bare_side.p50()),
            "wrapper_p50_ms": round(ours_side.p50()),
            "bare_tokens_per_s": bare_side.tokens_per_s().round(),
            "wrapper_tokens_per_s": ours_side.tokens_per_s().round(),
            "overhead": (overhead * 10_000.0).round() / 10_000.0,
        })
    );
    Ok(())
}
