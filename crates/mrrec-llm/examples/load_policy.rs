//! Loads policy version directories with nothing but mistral.rs 0.8.1's
//! public builder — no mrrec code — and asks each one a question.
//!
//! This is what an outside program does with a published version, so it is
//! the check that `policy/vNNNN/` is a plain mistral.rs model directory:
//!
//! ```text
//! cargo run --release -p mrrec-llm --example load_policy -- policy/v0000 policy/v0001 policy/v0002
//! ```
//!
//! Exits non-zero if any directory fails to load or to answer.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use mistralrs::{
    ModelDType, RequestBuilder, SamplingParams, TextMessageRole, TextModelBuilder, TokenSource,
};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        bail!("usage: load_policy POLICY_DIR [POLICY_DIR ...]");
    }
    for dir in dirs {
        let started = Instant::now();
        let model = TextModelBuilder::new(dir.clone())
            .with_token_source(TokenSource::None)
            .with_dtype(ModelDType::F32)
            .with_force_cpu()
            .build()
            .await
            .with_context(|| format!("mistral.rs could not load {dir}"))?;
        let loaded_ms = started.elapsed().as_millis();
        let request = RequestBuilder::new()
            .add_message(
                TextMessageRole::User,
                "Looking for a Horror movie. Profile: likes Horror, Thriller.",
            )
            .set_sampling(SamplingParams {
                max_len: Some(48),
                top_k: Some(1),
                ..SamplingParams::neutral()
            });
        let response = model
            .send_chat_request(request)
            .await
            .with_context(|| format!("{dir} loaded but did not answer"))?;
        let answer = response
            .choices
            .first()
            .and_then(|choice| choice.message.content.clone())
            .unwrap_or_default();
        println!(
            "{dir}: loaded in {loaded_ms} ms, {} completion tokens: {answer:?}",
            response.usage.completion_tokens
        );
    }
    Ok(())
}
