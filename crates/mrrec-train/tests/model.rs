//! The trainer's model against the engine that serves it: the same weights
//! and tokens give the same log-probabilities as mistral.rs 0.8.1, and every
//! weight receives a gradient (no op on the path silently cuts it).

use mistralrs::{RequestBuilder, SamplingParams, TextMessageRole};
use mrrec_llm::{EmbeddedLlm, EngineOptions};
use mrrec_policy::protocol::{self, ChatMessage};
use mrrec_policy::{init_model, ModelSpec, PolicyMeta};
use mrrec_train::PolicyModel;
use std::path::Path;

fn policy(dir: &Path, spec: &ModelSpec) {
    let meta = PolicyMeta::new(Some(0), None, "test");
    let catalog = vec![
        "Toy Story (1995) | Animation, Comedy".to_owned(),
        "Heat (1995) | Action, Crime, Thriller".to_owned(),
    ];
    init_model(dir, spec, &catalog, &meta).unwrap();
}

fn prompts() -> Vec<Vec<ChatMessage>> {
    let mut out = Vec::new();
    for (i, query) in [
        "a funny movie",
        "something dark and slow, maybe a thriller from the nineties with a twist",
        "",
    ]
    .iter()
    .enumerate()
    {
        let mut messages = vec![
            ChatMessage::system(protocol::INSTRUCTIONS),
            ChatMessage::user(format!("Request: {query}\nProfile: rated {i} items")),
        ];
        if i == 1 {
            messages.push(ChatMessage::assistant("<retrieve>thriller</retrieve>"));
            messages.push(ChatMessage::user(
                "<memory id=\"m1\">liked Heat (1995)</memory>".to_owned(),
            ));
        }
        out.push(messages);
    }
    out
}

/// Seeded weights give a near-uniform next-token distribution, on which a
/// wrong rotary embedding or mask would go unnoticed: scale every matrix up
/// so that attention, position and the MLP all move the logits.
fn sharpen(dir: &Path) {
    let path = dir.join(mrrec_policy::WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let scaled: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(name, t)| {
            let t = if name.ends_with("norm.weight") {
                t
            } else {
                (t * 12.0).unwrap()
            };
            (name, t)
        })
        .collect();
    candle_core::safetensors::save(&scaled, &path).unwrap();
}

/// Tolerance on natural-log probabilities: both sides compute in f32 with
/// different kernels and summation orders (measured differences are ~1e-5).
const TOLERANCE: f32 = 2e-3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trainer_log_probabilities_match_the_engine_on_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v0000");
    policy(&dir, &ModelSpec::default());
    sharpen(&dir);
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let vocab = tokenizer.get_vocab_size(true);
    let llm = EmbeddedLlm::open(&dir, EngineOptions::default())
        .await
        .unwrap();
    let trainer = PolicyModel::load(&dir, false).unwrap();

    for messages in prompts() {
        // The engine's full next-token distribution after the prompt.
        // Greedy requests report raw logits as "logprobs" in 0.8.1, so this
        // samples at temperature 1 with nothing filtered: those are the
        // softmax of the logits, reported in base 10.
        let mut request = RequestBuilder::new();
        for m in &messages {
            let role = match m.role {
                protocol::Role::System => TextMessageRole::System,
                protocol::Role::User => TextMessageRole::User,
                protocol::Role::Assistant => TextMessageRole::Assistant,
            };
            request = request.add_message(role, &m.content);
        }
        let request = request
            .set_sampling(SamplingParams {
                temperature: Some(1.0),
                top_n_logprobs: vocab,
                max_len: Some(1),
                ..SamplingParams::neutral()
            })
            .return_logprobs(true);
        let response = llm.sdk_model().send_chat_request(request).await.unwrap();
        let engine_prompt_tokens = response.usage.prompt_tokens;
        let content = response.choices[0]
            .logprobs
            .as_ref()
            .and_then(|l| l.content.clone())
            .expect("logprobs were requested");
        let engine: Vec<(u32, f32)> = content[0]
            .top_logprobs
            .iter()
            .map(|t| (t.token, t.logprob * std::f32::consts::LN_10))
            .collect();
        assert_eq!(engine.len(), vocab);

        let text = protocol::render_chat(&messages, true);
        let ids = tokenizer
            .encode(text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(
            ids.len(),
            engine_prompt_tokens,
            "prompt tokenization differs"
        );
        let all = trainer.all_logprobs(&ids).unwrap();
        let last = all.get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap();
        let spread = last.iter().cloned().fold(f32::MIN, f32::max)
            - last.iter().cloned().fold(f32::MAX, f32::min);
        assert!(
            spread > 5.0,
            "the distribution is too flat to compare: {spread}"
        );
        let mut worst = 0f32;
        for (token, logprob) in &engine {
            worst = worst.max((last[*token as usize] - logprob).abs());
        }
        eprintln!(
            "{} prompt tokens: log p spread {spread:.1}, largest |Δ log p| over {vocab} tokens = {worst:e}",
            ids.len()
        );
        assert!(worst < TOLERANCE, "largest difference {worst}");
    }
}

#[test]
fn every_weight_receives_a_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v0000");
    policy(&dir, &ModelSpec::tiny(3));
    let model = PolicyModel::load(&dir, true).unwrap();
    let tokens = vec![vec![5u32, 17, 42, 9, 300, 7, 12], vec![8u32, 3, 99, 14]];
    let scored: Vec<(usize, usize)> = (1..7).map(|t| (0, t)).chain([(1, 2), (1, 3)]).collect();
    let logprobs = model.token_logprobs(&tokens, &scored).unwrap();
    let loss = logprobs.sum_all().unwrap().neg().unwrap();
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for (name, var) in model.vars() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = grad
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm.is_finite() && norm > 0.0,
            "{name}: gradient norm {norm}"
        );
        checked += 1;
    }
    assert_eq!(checked, model.shape.tensor_shapes().len());
}

#[test]
fn the_gradient_agrees_with_a_finite_difference() {
    // d loss / d w for one weight of each kind, against (L(w+h) − L(w−h)) / 2h
    // computed with the constant model: the backward pass is the derivative of
    // the forward pass, not just non-zero.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v0000");
    policy(&dir, &ModelSpec::tiny(5));
    let tokens = vec![vec![5u32, 17, 42, 9, 300, 7, 12, 66]];
    let scored: Vec<(usize, usize)> = (1..8).map(|t| (0, t)).collect();
    let model = PolicyModel::load(&dir, true).unwrap();
    let loss = |m: &PolicyModel| -> f64 {
        f64::from(
            m.token_logprobs(&tokens, &scored)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        )
    };
    let grads = model
        .token_logprobs(&tokens, &scored)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for name in [
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.norm.weight",
    ] {
        let (_, var) = model.vars().find(|(n, _)| *n == name).unwrap();
        let grad = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
        let values = grad.to_vec1::<f32>().unwrap();
        // The element with the largest gradient, so f32 noise stays small.
        let (index, analytic) = values
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .map(|(i, g)| (i, f64::from(*g)))
            .unwrap();
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let h = 1e-2f32;
        let shifted = |delta: f32| {
            let mut v = original.clone();
            v[index] += delta;
            let t = candle_core::Tensor::from_vec(v, var.shape(), var.device()).unwrap();
            var.set(&t).unwrap();
            loss(&model)
        };
        let numeric = (shifted(h) - shifted(-h)) / (2.0 * f64::from(h));
        shifted(0.0);
        let error = (numeric - analytic).abs() / analytic.abs().max(1e-3);
        assert!(
            error < 0.05,
            "{name}[{index}]: analytic {analytic}, finite difference {numeric}"
        );
    }
}
