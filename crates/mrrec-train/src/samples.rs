//! Rewarded trajectories as token sequences: the prompt tokenized under the
//! generating version's tokenizer, then every segment's token ids, with the
//! positions the policy wrote (model segments) marked for the loss and the
//! system-inserted ones (role markers, memory) left out.

use mrrec_messages::{SegmentSource, Trajectory};
use tokenizers::Tokenizer;

/// A trajectory with its reward (DESIGN §5's total), as the trainer gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewarded {
    pub trajectory: Trajectory,
    pub reward: f64,
}

/// One trajectory ready for the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub request_id: String,
    pub trajectory_id: String,
    pub policy_version: u32,
    pub tokens: Vec<u32>,
    /// Positions (≥ 1) of tokens the policy sampled: the only ones trained on.
    pub scored: Vec<usize>,
    pub reward: f64,
}

/// Builds the sample of `rewarded` under its version's `tokenizer`. A
/// segment's logged token ids are used when they decode back to its text;
/// ids that do not (a corrupt split) or fall outside the vocabulary reject
/// the trajectory, with the reason.
pub fn build_sample(
    rewarded: &Rewarded,
    tokenizer: &Tokenizer,
    vocab_size: usize,
    max_tokens: usize,
) -> Result<Sample, String> {
    let trajectory = &rewarded.trajectory;
    if !rewarded.reward.is_finite() {
        return Err(format!("reward {} is not a finite number", rewarded.reward));
    }
    let mut tokens = encode(tokenizer, &trajectory.prompt).map_err(|e| format!("prompt: {e}"))?;
    if tokens.is_empty() {
        return Err("the prompt is empty".into());
    }
    let mut scored = Vec::new();
    for (index, segment) in trajectory.segments.iter().enumerate() {
        let ids = if segment.tokens.is_empty() {
            encode(tokenizer, &segment.text).map_err(|e| format!("segment {index}: {e}"))?
        } else {
            if let Some(bad) = segment.tokens.iter().find(|&&t| t as usize >= vocab_size) {
                return Err(format!(
                    "segment {index}: token id {bad} is outside the vocabulary ({vocab_size})"
                ));
            }
            let decoded = tokenizer
                .decode(&segment.tokens, false)
                .map_err(|e| format!("segment {index}: {e}"))?;
            if decoded != segment.text {
                return Err(format!(
                    "segment {index}: its token ids decode to {} bytes that differ from its text ({} bytes)",
                    decoded.len(),
                    segment.text.len()
                ));
            }
            segment.tokens.clone()
        };
        if segment.source == SegmentSource::Model {
            scored.extend(tokens.len()..tokens.len() + ids.len());
        }
        tokens.extend(ids);
    }
    if scored.is_empty() {
        return Err("no token was written by the policy".into());
    }
    if tokens.len() > max_tokens {
        return Err(format!(
            "{} tokens exceed the trainer's limit of {max_tokens}",
            tokens.len()
        ));
    }
    Ok(Sample {
        request_id: trajectory.request_id.clone(),
        trajectory_id: trajectory.trajectory_id.clone(),
        policy_version: trajectory.policy_version,
        tokens,
        scored,
        reward: rewarded.reward,
    })
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, String> {
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| e.to_string())
}
