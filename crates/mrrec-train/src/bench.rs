//! `mrrec bench train`: one GRPO update over synthetic rewarded trajectories
//! shaped like the agent's (prompt, a retrieve turn, inserted memory, an
//! answer turn), timed in its two parts — recomputing the generating
//! policy's log-probabilities, and the update itself.

use crate::grpo::{self, AdamW, GrpoSettings};
use crate::model::PolicyModel;
use crate::samples::{build_sample, Rewarded};
use crate::TrainError;
use mrrec_messages::{Segment, SegmentSource, Trajectory};
use mrrec_policy::protocol::{self, ChatMessage};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

const WORDS: [&str; 24] = [
    "funny",
    "dark",
    "classic",
    "romantic",
    "space",
    "war",
    "family",
    "crime",
    "musical",
    "western",
    "thriller",
    "drama",
    "comedy",
    "animation",
    "documentary",
    "horror",
    "mystery",
    "nineties",
    "quiet",
    "epic",
    "heist",
    "noir",
    "indie",
    "sequel",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn word(&mut self) -> &'static str {
        WORDS[(self.next() % WORDS.len() as u64) as usize]
    }

    fn words(&mut self, n: usize) -> String {
        (0..n).map(|_| self.word()).collect::<Vec<_>>().join(" ")
    }
}

/// Titles made of random syllables, enough of them that `model init`'s
/// tokenizer fills the default 4096-entry vocabulary (as a real catalog does).
pub fn synthetic_catalog(items: usize, seed: u64) -> Vec<String> {
    let syllables: Vec<String> = "bcdfghjklmnprstvwz"
        .chars()
        .flat_map(|c| "aeiou".chars().map(move |v| format!("{c}{v}")))
        .collect();
    let mut rng = Rng(seed ^ 0x1234_5678_9ABC_DEF0);
    (0..items)
        .map(|i| {
            let mut word = || {
                let n = 2 + rng.next() % 3;
                (0..n)
                    .map(|_| syllables[(rng.next() % syllables.len() as u64) as usize].as_str())
                    .collect::<String>()
            };
            let title = format!("{} {} {}", word(), word(), word());
            format!("{title} ({}) | {}", 1930 + i % 90, WORDS[i % WORDS.len()])
        })
        .collect()
}

/// `requests × group` rewarded trajectories of version 0, seeded.
pub fn synthetic_rewarded(requests: usize, group: usize, seed: u64) -> Vec<Rewarded> {
    let mut rng = Rng(seed ^ 0xA24B_AED4_963E_E407);
    let mut out = Vec::with_capacity(requests * group);
    for r in 0..requests {
        let messages = vec![
            ChatMessage::system(protocol::INSTRUCTIONS),
            ChatMessage::user(format!(
                "Request: {}\nGlobal memory: people who chose {} chose {}\nProfile: likes {}; rated {} items",
                rng.words(6),
                rng.words(3),
                rng.words(3),
                rng.words(5),
                rng.next() % 300
            )),
        ];
        let prompt = protocol::render_chat(&messages, false);
        for index in 0..group {
            let model = |text: String| Segment {
                source: SegmentSource::Model,
                text: format!("{text}{}", protocol::EOS),
                tokens: Vec::new(),
            };
            let system = |text: String| Segment {
                source: SegmentSource::System,
                text,
                tokens: Vec::new(),
            };
            let segments = vec![
                system(protocol::ASSISTANT.to_owned()),
                model(format!(
                    "<think>{}</think><retrieve>{}</retrieve>",
                    rng.words(5),
                    rng.words(2)
                )),
                system(format!(
                    "{}<memory id=\"m{}\">{}</memory><memory id=\"m{}\">{}</memory>{}",
                    protocol::USER,
                    rng.next() % 1000,
                    rng.words(9),
                    rng.next() % 1000,
                    rng.words(9),
                    protocol::ASSISTANT
                )),
                model(format!(
                    "<answer>{{\"profile\":\"{}\",\"memory_ids\":[\"m{}\"]}}</answer>",
                    rng.words(14),
                    rng.next() % 1000
                )),
            ];
            out.push(Rewarded {
                trajectory: Trajectory {
                    trajectory_id: format!("bench-{r}-{index}"),
                    request_id: format!("bench-{r}"),
                    user_id: format!("u{r}"),
                    index: index as u32,
                    group_size: group as u32,
                    served: index == 0,
                    policy_version: 0,
                    prompt: prompt.clone(),
                    segments,
                    profile: String::new(),
                    memory_ids: Vec::new(),
                    format_ok: true,
                    ts: 0,
                },
                reward: (rng.next() % 1000) as f64 / 100.0,
            });
        }
    }
    out
}

/// What `bench train` prints.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    pub trajectories: usize,
    pub tokens: usize,
    pub mean_tokens: f64,
    pub scored_tokens: usize,
    pub optimizer_steps: usize,
    /// Recomputing the generating policy's log-probabilities.
    pub old_logprobs_seconds: f64,
    /// Forward + backward + AdamW over every trajectory.
    pub grpo_seconds: f64,
    /// Both: one update as the trainer runs it.
    pub seconds_per_update: f64,
    /// Trajectory tokens through the update per second.
    pub tokens_per_s: f64,
    pub parameters: usize,
}

/// Times one update of the policy in `dir` over `rewarded`.
pub fn run(
    dir: &Path,
    rewarded: &[Rewarded],
    settings: &GrpoSettings,
) -> Result<TrainBench, TrainError> {
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| TrainError::policy(dir, e.to_string()))?;
    let shape = crate::LlamaShape::read(dir)?;
    let samples = rewarded
        .iter()
        .map(|r| build_sample(r, &tokenizer, shape.vocab_size, usize::MAX))
        .collect::<Result<Vec<_>, _>>()
        .map_err(TrainError::Input)?;
    let all: Vec<usize> = (0..samples.len()).collect();
    let started = Instant::now();
    let old = grpo::scored_logprobs(
        &PolicyModel::load(dir, false)?,
        &samples,
        &all,
        settings.chunk_tokens,
    )?;
    let old_seconds = started.elapsed().as_secs_f64();
    let model = PolicyModel::load(dir, true)?;
    let vars: Vec<_> = model.vars().map(|(_, v)| v).collect();
    let mut optimizer = AdamW::new(&vars, settings.learning_rate, settings.weight_decay)?;
    let report = grpo::update(&model, &mut optimizer, &samples, &old, None, settings)?;
    let seconds = old_seconds + report.seconds;
    Ok(TrainBench {
        trajectories: samples.len(),
        tokens: report.tokens,
        mean_tokens: report.tokens as f64 / samples.len().max(1) as f64,
        scored_tokens: report.scored_tokens,
        optimizer_steps: report.steps,
        old_logprobs_seconds: old_seconds,
        grpo_seconds: report.seconds,
        seconds_per_update: seconds,
        tokens_per_s: report.tokens as f64 / seconds,
        parameters: model.parameters(),
    })
}
