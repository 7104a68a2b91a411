//! `mrrec model init`: builds a policy directory from nothing — a byte-level
//! BPE tokenizer trained on the catalog and the protocol text, a small Llama
//! `config.json`, seeded weights as `model.safetensors`, and the chat
//! template — that mistral.rs 0.8.1 loads as it is.

use crate::protocol::{self, SPECIAL_TOKENS};
use crate::{PolicyError, PolicyMeta};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper};
use tokenizers::{PreTokenizerWrapper, TokenizerBuilder, TokenizerImpl};

/// Sizes of the policy model. The default (~2M parameters) keeps a GRPO
/// update over 1,000 trajectories near a minute on two CPU cores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Target vocabulary (the trained tokenizer may stop short on a small corpus).
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f32,
    /// Seed of the weight initialisation.
    pub seed: u64,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            vocab_size: 4096,
            hidden_size: 128,
            intermediate_size: 512,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 4,
            max_position_embeddings: 4096,
            rope_theta: 10_000.0,
            seed: 0,
        }
    }
}

impl ModelSpec {
    /// A very small model (~0.1M parameters) for tests: loads and decodes in milliseconds.
    pub fn tiny(seed: u64) -> Self {
        Self {
            vocab_size: 1024,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 2,
            seed,
            ..Self::default()
        }
    }

    /// Every problem with the sizes, each as one line.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let min_vocab = 256 + SPECIAL_TOKENS.len();
        if self.vocab_size < min_vocab {
            problems.push(format!(
                "vocab_size {} is below {min_vocab} (256 bytes + special tokens)",
                self.vocab_size
            ));
        }
        for (name, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if self.num_heads > 0 && !self.hidden_size.is_multiple_of(self.num_heads) {
            problems.push(format!(
                "hidden_size {} is not a multiple of num_heads {}",
                self.hidden_size, self.num_heads
            ));
        } else if self.num_heads > 0 && !(self.hidden_size / self.num_heads).is_multiple_of(2) {
            problems.push("hidden_size / num_heads must be even (rotary embeddings)".into());
        }
        if self.num_kv_heads > 0 && !self.num_heads.is_multiple_of(self.num_kv_heads) {
            problems.push(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            problems.push("rope_theta must be a positive number".into());
        }
        problems
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// What `init_model` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub vocab_size: usize,
    pub parameters: usize,
    pub corpus_texts: usize,
}

/// The HF `config.json` of a Llama model with these sizes.
pub fn llama_config(spec: &ModelSpec, vocab_size: usize, eos_id: u32) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "vocab_size": vocab_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": spec.rope_theta,
        "max_position_embeddings": spec.max_position_embeddings,
        "tie_word_embeddings": false,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    })
}

type Bpe = TokenizerImpl<
    BPE,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// Trains a byte-level BPE tokenizer on `texts`; special tokens come first
/// (EOS has id 0). Protocol tags stay ordinary text (a few tokens each): an
/// added token shaped `<…>` would be taken for a special token by llguidance,
/// which then refuses it where the grammar wants the tag's text.
pub fn train_tokenizer(texts: &[String], vocab_size: usize) -> Result<Bpe, PolicyError> {
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer: Bpe = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)))
        .with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)))
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())))
        .build()
        .map_err(|e| PolicyError::Tokenizer(e.to_string()))?;
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let special: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(special)
        .initial_alphabet(alphabet)
        .build();
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| PolicyError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

/// A deterministic normal sampler (splitmix64 + Box–Muller): weights depend
/// only on the seed, on every platform.
struct NormalSampler {
    state: u64,
    spare: Option<f32>,
}

impl NormalSampler {
    fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        // 53 random bits in (0, 1].
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        if let Some(value) = self.spare.take() {
            return value;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        self.spare = Some((radius * angle.sin()) as f32);
        (radius * angle.cos()) as f32
    }
}

/// Llama weight names and shapes (HF layout: linear weights are `[out, in]`).
pub fn llama_tensor_shapes(spec: &ModelSpec, vocab_size: usize) -> BTreeMap<String, Vec<usize>> {
    let (h, i) = (spec.hidden_size, spec.intermediate_size);
    let q = spec.num_heads * spec.head_dim();
    let kv = spec.num_kv_heads * spec.head_dim();
    let mut shapes = BTreeMap::new();
    shapes.insert("model.embed_tokens.weight".to_owned(), vec![vocab_size, h]);
    shapes.insert("lm_head.weight".to_owned(), vec![vocab_size, h]);
    shapes.insert("model.norm.weight".to_owned(), vec![h]);
    for layer in 0..spec.num_layers {
        let p = format!("model.layers.{layer}");
        for (name, shape) in [
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            shapes.insert(format!("{p}.{name}"), shape);
        }
    }
    shapes
}

/// Seeded weights: norms at 1, matrices N(0, 0.02²), the projections that
/// write into the residual stream scaled down by √(2·layers) (GPT-2's rule).
pub fn seeded_weights(spec: &ModelSpec, vocab_size: usize) -> BTreeMap<String, Vec<f32>> {
    let mut sampler = NormalSampler::new(spec.seed);
    let residual_scale = 1.0 / (2.0 * spec.num_layers as f32).sqrt();
    llama_tensor_shapes(spec, vocab_size)
        .into_iter()
        .map(|(name, shape)| {
            let len: usize = shape.iter().product();
            let values = if name.ends_with("norm.weight") {
                vec![1.0; len]
            } else {
                let scale = if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight")
                {
                    0.02 * residual_scale
                } else {
                    0.02
                };
                (0..len).map(|_| sampler.normal() * scale).collect()
            };
            (name, values)
        })
        .collect()
}

/// Writes F32 tensors as a safetensors file.
pub fn write_safetensors(
    path: &Path,
    shapes: &BTreeMap<String, Vec<usize>>,
    values: &BTreeMap<String, Vec<f32>>,
) -> Result<(), PolicyError> {
    let bytes: BTreeMap<&String, Vec<u8>> = values
        .iter()
        .map(|(name, v)| (name, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (name, data) in &bytes {
        let shape = shapes
            .get(*name)
            .ok_or_else(|| PolicyError::Weights(format!("no shape for tensor {name}")))?;
        let view = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| PolicyError::Weights(format!("{name}: {e}")))?;
        views.push(((*name).clone(), view));
    }
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| PolicyError::Weights(format!("writing {}: {e}", path.display())))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), PolicyError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| PolicyError::io(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| PolicyError::io(path, e))
}

/// Builds a policy directory at `out` (which must not exist or be empty):
/// tokenizer trained on `catalog_texts` plus the protocol corpus, config,
/// seeded weights, chat template, and `policy.json` with `meta`.
pub fn init_model(
    out: &Path,
    spec: &ModelSpec,
    catalog_texts: &[String],
    meta: &PolicyMeta,
) -> Result<InitReport, PolicyError> {
    let problems = spec.problems();
    if !problems.is_empty() {
        return Err(PolicyError::Spec(problems));
    }
    crate::ensure_empty_dir(out)?;
    let mut texts = protocol::protocol_corpus();
    texts.extend(catalog_texts.iter().cloned());
    let tokenizer = train_tokenizer(&texts, spec.vocab_size)?;
    let vocab_size = tokenizer.get_vocab_size(true);
    let eos_id = tokenizer
        .token_to_id(protocol::EOS)
        .ok_or_else(|| PolicyError::Tokenizer("the trained vocabulary lacks EOS".into()))?;

    let tokenizer_path = out.join("tokenizer.json");
    tokenizer
        .save(&tokenizer_path, false)
        .map_err(|e| PolicyError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
    write_json(
        &out.join("tokenizer_config.json"),
        &serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": protocol::EOS,
            "eos_token": protocol::EOS,
            "unk_token": null,
            "add_bos_token": false,
            "add_eos_token": false,
            "model_max_length": spec.max_position_embeddings,
            "chat_template": protocol::CHAT_TEMPLATE,
        }),
    )?;
    write_json(
        &out.join("generation_config.json"),
        &serde_json::json!({ "bos_token_id": eos_id, "eos_token_id": eos_id }),
    )?;
    write_json(
        &out.join("config.json"),
        &llama_config(spec, vocab_size, eos_id),
    )?;
    let shapes = llama_tensor_shapes(spec, vocab_size);
    let weights = seeded_weights(spec, vocab_size);
    let parameters = weights.values().map(Vec::len).sum();
    write_safetensors(&out.join(crate::WEIGHTS_FILE), &shapes, &weights)?;
    write_json(&out.join(crate::META_FILE), meta)?;
    Ok(InitReport {
        vocab_size,
        parameters,
        corpus_texts: texts.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_is_deterministic_and_roughly_standard_normal() {
        let mut a = NormalSampler::new(7);
        let mut b = NormalSampler::new(7);
        let xs: Vec<f32> = (0..20_000).map(|_| a.normal()).collect();
        let ys: Vec<f32> = (0..20_000).map(|_| b.normal()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn bad_sizes_are_all_reported() {
        let spec = ModelSpec {
            vocab_size: 10,
            hidden_size: 130,
            num_heads: 4,
            num_kv_heads: 3,
            ..ModelSpec::default()
        };
        let problems = spec.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn the_default_model_has_about_two_million_parameters() {
        let spec = ModelSpec::default();
        let n: usize = llama_tensor_shapes(&spec, spec.vocab_size)
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum();
        assert!((1_500_000..3_000_000).contains(&n), "{n}");
    }

    #[test]
    fn the_tokenizer_learns_the_tags_and_round_trips_text() {
        use crate::protocol::TAG_TOKENS;
        let texts = crate::protocol::protocol_corpus();
        let tokenizer = train_tokenizer(&texts, 600).unwrap();
        for tag in SPECIAL_TOKENS {
            let encoding = tokenizer.encode(tag, false).unwrap();
            assert_eq!(encoding.get_ids().len(), 1, "{tag} is not one token");
        }
        for tag in TAG_TOKENS {
            let encoding = tokenizer.encode(tag, false).unwrap();
            assert!(
                encoding.get_ids().len() <= 4,
                "{tag}: {:?}",
                encoding.get_tokens()
            );
        }
        assert_eq!(tokenizer.token_to_id(crate::protocol::EOS), Some(0));
        let text = "Ünïcode <retrieve>funny films</retrieve> 42 \"quoted\"";
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    }
}
