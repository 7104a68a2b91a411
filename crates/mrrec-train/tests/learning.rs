//! GRPO really learns, end to end on real parts: mistral.rs samples groups of
//! trajectories from the current version under a grammar, a synthetic
//! reward pays for the one right retrieve query, the trainer writes the next
//! version, and the engine switches to it. Mean reward rises from chance to
//! near the optimum within a bounded number of rounds.

use mrrec_llm::{EmbeddedLlm, EngineOptions, GenerationRequest, Llm, Sampling};
use mrrec_messages::{Segment, SegmentSource, Trajectory};
use mrrec_policy::protocol::{self, ChatMessage};
use mrrec_policy::{init_model, ModelSpec, PolicyMeta, PolicyRegistry};
use mrrec_train::{Decision, GrpoSettings, Rewarded, TrainSettings};

const ASPECTS: [&str; 4] = ["comedy", "drama", "horror", "action"];
const RIGHT: &str = "comedy";
const PROMPTS: usize = 8;
const GROUP: usize = 8;
const MAX_ROUNDS: usize = 12;

fn grammar() -> String {
    let options: Vec<String> = ASPECTS.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "start: \"<retrieve>\" QUERY \"</retrieve>\"\nQUERY: {}\n",
        options.join(" | ")
    )
}

fn messages(i: usize) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(protocol::INSTRUCTIONS),
        ChatMessage::user(format!(
            "Request: something for evening {i}\nProfile: user {i}"
        )),
    ]
}

/// One round of sampling: every prompt's group from the serving version.
async fn sample_round(llm: &EmbeddedLlm, round: usize) -> Vec<Rewarded> {
    let mut out = Vec::new();
    for i in 0..PROMPTS {
        let request = GenerationRequest {
            messages: messages(i),
            grammar: Some(grammar()),
            sampling: Sampling {
                temperature: 1.0,
                top_p: 1.0,
                max_tokens: 32,
            },
            n: GROUP,
        };
        let generation = llm.generate(request).await.unwrap();
        let prompt = protocol::render_chat(&messages(i), false);
        for (index, completion) in generation.completions.iter().enumerate() {
            let query = completion
                .text
                .trim_start_matches("<retrieve>")
                .trim_end_matches("</retrieve>");
            assert!(ASPECTS.contains(&query), "{:?}", completion.text);
            let request_id = format!("r{round}-{i}");
            out.push(Rewarded {
                trajectory: Trajectory {
                    trajectory_id: format!("{request_id}-{index}"),
                    request_id,
                    user_id: format!("u{i}"),
                    index: index as u32,
                    group_size: GROUP as u32,
                    served: index == 0,
                    policy_version: generation.policy_version,
                    prompt: prompt.clone(),
                    segments: vec![
                        Segment {
                            source: SegmentSource::System,
                            text: protocol::ASSISTANT.into(),
                            tokens: Vec::new(),
                        },
                        Segment {
                            source: SegmentSource::Model,
                            text: format!("{}{}", completion.text, protocol::EOS),
                            tokens: Vec::new(),
                        },
                    ],
                    profile: String::new(),
                    memory_ids: Vec::new(),
                    format_ok: true,
                    ts: 0,
                },
                reward: if query == RIGHT { 1.0 } else { 0.0 },
            });
        }
    }
    out
}

fn mean_reward(rewarded: &[Rewarded]) -> f64 {
    rewarded.iter().map(|r| r.reward).sum::<f64>() / rewarded.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mean_reward_rises_from_chance_to_near_the_optimum() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = PolicyRegistry::new(tmp.path().join("policy"));
    let staging = registry.staging_dir(0).unwrap();
    let meta = PolicyMeta::new(Some(0), None, "test");
    let catalog: Vec<String> = ASPECTS.iter().map(|a| format!("a {a} film")).collect();
    init_model(&staging, &ModelSpec::tiny(11), &catalog, &meta).unwrap();
    let v0 = registry.publish(&staging, 0).unwrap();
    let llm = EmbeddedLlm::open(&v0.path, EngineOptions::default())
        .await
        .unwrap();
    let settings = TrainSettings {
        grpo: GrpoSettings {
            learning_rate: 3e-3,
            epochs: 2,
            minibatch: 32,
            ..GrpoSettings::default()
        },
        holdout_fraction: 0.0,
        ..TrainSettings::default()
    };

    let mut curve = Vec::new();
    for round in 0..MAX_ROUNDS {
        let rewarded = sample_round(&llm, round).await;
        let mean = mean_reward(&rewarded);
        curve.push(mean);
        eprintln!(
            "round {round}: v{:04} mean reward {mean:.3}",
            llm.serving_version()
        );
        if mean >= 0.9 {
            break;
        }
        let report =
            mrrec_train::train_round(&registry, &rewarded, &settings, &|_| Ok(())).unwrap();
        let Decision::Published(version) = report.decision else {
            panic!("round {round} published nothing: {:?}", report.decision);
        };
        assert_eq!(version.version as usize, round + 1);
        assert_eq!(llm.switch_to(&version.path).await.unwrap(), version.version);
    }
    let first = curve[0];
    let last = *curve.last().unwrap();
    assert!(
        first < 0.6,
        "the untrained policy should be near chance (0.25), got {first}"
    );
    assert!(
        last >= 0.9,
        "mean reward did not reach 0.9 within {MAX_ROUNDS} rounds: {curve:?}"
    );
}
