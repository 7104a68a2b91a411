//! The policy's Llama forward pass in differentiable candle ops.
//!
//! candle 0.10.2's fused `softmax_last_dim`, contiguous `rms_norm` and `rope`
//! have no backward pass and would silently cut gradients, so every one of
//! them is written out here from ops that do (exp, sums, narrow, cat, …).
//! The arithmetic is the one mistral.rs runs on the same `model.safetensors`
//! (HF Llama: pre-norm blocks, rotate-half rotary embeddings, causal
//! attention scaled by 1/√head_dim, SiLU-gated MLP); a test holds the two to
//! the same log-probabilities.

use crate::TrainError;
use candle_core::{DType, Device, Tensor, Var, D};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// The sizes of a Llama `config.json` that the forward pass needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaShape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_theta() -> f64 {
    10_000.0
}

impl LlamaShape {
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| TrainError::policy(dir, format!("{}: {e}", path.display())))?;
        let shape: LlamaShape = serde_json::from_str(&text)
            .map_err(|e| TrainError::policy(dir, format!("{}: {e}", path.display())))?;
        let heads = shape.num_attention_heads;
        if heads == 0
            || !shape.hidden_size.is_multiple_of(heads)
            || !(shape.hidden_size / heads).is_multiple_of(2)
            || shape.kv_heads() == 0
            || !heads.is_multiple_of(shape.kv_heads())
        {
            return Err(TrainError::policy(
                dir,
                format!("config.json has unusable attention sizes: {shape:?}"),
            ));
        }
        Ok(shape)
    }

    fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Every weight the model reads, with its HF shape (the layout
    /// `model init` writes; no `lm_head` when the embeddings are tied).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let spec = mrrec_policy::ModelSpec {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.kv_heads(),
            ..mrrec_policy::ModelSpec::default()
        };
        mrrec_policy::init::llama_tensor_shapes(&spec, self.vocab_size)
            .into_iter()
            .filter(|(name, _)| !(self.tie_word_embeddings && name == "lm_head.weight"))
            .collect()
    }
}

/// Weights of one policy version: trainable variables, or constants for a
/// reference / generating policy (no autograd graph is built through them).
pub struct PolicyModel {
    pub shape: LlamaShape,
    /// In [`LlamaShape::tensor_shapes`] order.
    names: Vec<String>,
    weights: Vec<Tensor>,
    vars: Vec<Var>,
    device: Device,
}

impl std::fmt::Debug for PolicyModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyModel")
            .field("shape", &self.shape)
            .field("trainable", &!self.vars.is_empty())
            .finish()
    }
}

impl PolicyModel {
    /// Loads `dir/config.json` and `dir/model.safetensors` (F32, CPU).
    pub fn load(dir: &Path, trainable: bool) -> Result<Self, TrainError> {
        let shape = LlamaShape::read(dir)?;
        let path = dir.join(mrrec_policy::WEIGHTS_FILE);
        let device = Device::Cpu;
        let mut tensors = candle_core::safetensors::load(&path, &device)
            .map_err(|e| TrainError::policy(dir, format!("{}: {e}", path.display())))?;
        let mut names = Vec::new();
        let mut weights = Vec::new();
        let mut vars = Vec::new();
        for (name, expected) in shape.tensor_shapes() {
            let tensor = tensors.remove(&name).ok_or_else(|| {
                TrainError::policy(dir, format!("{} lacks tensor {name}", path.display()))
            })?;
            if tensor.dims() != expected.as_slice() {
                return Err(TrainError::policy(
                    dir,
                    format!(
                        "tensor {name} has shape {:?}, config.json implies {expected:?}",
                        tensor.dims()
                    ),
                ));
            }
            let tensor = tensor.to_dtype(DType::F32)?;
            if trainable {
                let var = Var::from_tensor(&tensor)?;
                weights.push(var.as_tensor().clone());
                vars.push(var);
            } else {
                weights.push(tensor);
            }
            names.push(name);
        }
        Ok(Self {
            shape,
            names,
            weights,
            vars,
            device,
        })
    }

    /// The trainable variables with their names (empty for a constant model).
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.names.iter().map(String::as_str).zip(self.vars.iter())
    }

    pub fn parameters(&self) -> usize {
        self.weights.iter().map(Tensor::elem_count).sum()
    }

    fn weight(&self, name: &str) -> &Tensor {
        let index = self
            .names
            .iter()
            .position(|n| n == name)
            .expect("every weight name comes from tensor_shapes");
        &self.weights[index]
    }

    /// Writes the current weights as `dir/model.safetensors`.
    pub fn save_weights(&self, dir: &Path) -> Result<(), TrainError> {
        let map: HashMap<String, Tensor> = self
            .names
            .iter()
            .cloned()
            .zip(self.weights.iter().map(|w| w.detach()))
            .collect();
        let path = dir.join(mrrec_policy::WEIGHTS_FILE);
        candle_core::safetensors::save(&map, &path)
            .map_err(|e| TrainError::policy(dir, format!("writing {}: {e}", path.display())))
    }

    /// Whether every weight is a finite number.
    pub fn is_finite(&self) -> Result<bool, TrainError> {
        for w in &self.weights {
            let values = w.flatten_all()?.to_vec1::<f32>()?;
            if values.iter().any(|v| !v.is_finite()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Final hidden states `[batch·len, hidden]` of right-padded sequences
    /// (`tokens[b]` padded to the longest). Padding sits after every real
    /// token, so under the causal mask it changes no real position.
    fn hidden(&self, tokens: &[Vec<u32>]) -> Result<(Tensor, usize), TrainError> {
        let s = &self.shape;
        let batch = tokens.len();
        let len = tokens.iter().map(Vec::len).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(batch * len);
        for sequence in tokens {
            for t in 0..len {
                let id = sequence.get(t).copied().unwrap_or(0);
                if id as usize >= s.vocab_size {
                    return Err(TrainError::Input(format!(
                        "token id {id} is outside the vocabulary ({})",
                        s.vocab_size
                    )));
                }
                flat.push(id);
            }
        }
        let ids = Tensor::from_vec(flat, batch * len, &self.device)?;
        let mut x = self
            .weight("model.embed_tokens.weight")
            .index_select(&ids, 0)?;
        let (cos, sin) = rotary_tables(len, s.head_dim(), s.rope_theta, &self.device)?;
        let mask = causal_mask(len, &self.device)?;
        for layer in 0..s.num_hidden_layers {
            let p = format!("model.layers.{layer}");
            let w = |name: &str| self.weight(&format!("{p}.{name}"));
            let normed = rms_norm(&x, w("input_layernorm.weight"), s.rms_norm_eps)?;
            let attn = self.attention(&normed, batch, len, &cos, &sin, &mask, &w)?;
            x = (x + attn)?;
            let normed = rms_norm(&x, w("post_attention_layernorm.weight"), s.rms_norm_eps)?;
            let gate = linear(&normed, w("mlp.gate_proj.weight"))?.silu()?;
            let up = linear(&normed, w("mlp.up_proj.weight"))?;
            x = (x + linear(&(gate * up)?, w("mlp.down_proj.weight"))?)?;
        }
        let x = rms_norm(&x, self.weight("model.norm.weight"), s.rms_norm_eps)?;
        Ok((x, len))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention<'a>(
        &self,
        x: &Tensor,
        batch: usize,
        len: usize,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        w: &impl Fn(&str) -> &'a Tensor,
    ) -> Result<Tensor, TrainError> {
        let s = &self.shape;
        let (heads, kv_heads, head_dim) = (s.num_attention_heads, s.kv_heads(), s.head_dim());
        let split = |t: Tensor, n: usize| -> Result<Tensor, TrainError> {
            Ok(t.reshape((batch, len, n, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(linear(x, w("self_attn.q_proj.weight"))?, heads)?;
        let k = split(linear(x, w("self_attn.k_proj.weight"))?, kv_heads)?;
        let v = split(linear(x, w("self_attn.v_proj.weight"))?, kv_heads)?;
        // Scaling q (len × head_dim) is cheaper than scaling the scores (len × len).
        let q = (rope(&q, cos, sin)? * (1.0 / (head_dim as f64).sqrt()))?;
        let k = rope(&k, cos, sin)?;
        let (k, v) = if kv_heads == heads {
            (k, v)
        } else {
            let repeat = heads / kv_heads;
            (repeat_kv(&k, repeat)?, repeat_kv(&v, repeat)?)
        };
        let scores = q.matmul(&k.t()?.contiguous()?)?.broadcast_add(mask)?;
        let probs = softmax_last(&scores)?;
        let out = probs.matmul(&v)?; // [b, heads, len, head_dim]
        let out = out
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch * len, heads * head_dim))?;
        linear(&out, w("self_attn.o_proj.weight"))
    }

    /// Natural-log probabilities of `tokens[b][t]` given `tokens[b][..t]`,
    /// for each `(b, t)` in `scored` (t ≥ 1), in that order. Logits are
    /// computed only at the scored positions.
    pub fn token_logprobs(
        &self,
        tokens: &[Vec<u32>],
        scored: &[(usize, usize)],
    ) -> Result<Tensor, TrainError> {
        let (hidden, len) = self.hidden(tokens)?;
        let mut rows = Vec::with_capacity(scored.len());
        let mut targets = Vec::with_capacity(scored.len());
        for &(b, t) in scored {
            if t == 0 || t >= tokens[b].len() {
                return Err(TrainError::Input(format!(
                    "position {t} of a {}-token sequence cannot be scored",
                    tokens[b].len()
                )));
            }
            rows.push((b * len + t - 1) as u32);
            targets.push(tokens[b][t]);
        }
        let n = rows.len();
        let rows = Tensor::from_vec(rows, n, &self.device)?;
        let targets = Tensor::from_vec(targets, (n, 1), &self.device)?;
        let picked = hidden.index_select(&rows, 0)?;
        let logits = linear(&picked, self.head())?;
        let logprobs = log_softmax_last(&logits)?;
        Ok(logprobs.gather(&targets, 1)?.squeeze(1)?)
    }

    /// Log-probabilities over the whole vocabulary at every position of one
    /// sequence, `[len, vocab]` (for parity checks against the engine).
    pub fn all_logprobs(&self, tokens: &[u32]) -> Result<Tensor, TrainError> {
        let (hidden, _) = self.hidden(&[tokens.to_vec()])?;
        log_softmax_last(&linear(&hidden, self.head())?)
    }

    fn head(&self) -> &Tensor {
        if self.shape.tie_word_embeddings {
            self.weight("model.embed_tokens.weight")
        } else {
            self.weight("lm_head.weight")
        }
    }
}

/// `x · wᵀ` for `x: [n, in]`, `w: [out, in]`.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor, TrainError> {
    Ok(x.matmul(&w.t()?)?)
}

/// RMS norm over the last dimension, from differentiable ops.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor, TrainError> {
    let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&scale)?.broadcast_mul(weight)?)
}

/// Softmax over the last dimension (the max is a constant shift).
fn softmax_last(x: &Tensor) -> Result<Tensor, TrainError> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let e = shifted.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension.
fn log_softmax_last(x: &Tensor) -> Result<Tensor, TrainError> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// cos and sin tables `[len, head_dim/2]` of rotary embeddings.
fn rotary_tables(
    len: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor), TrainError> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for position in 0..len {
        for i in 0..half {
            // The same f32 arithmetic as candle's RotaryEmbedding tables.
            let inv_freq = 1f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32);
            let angle = position as f32 * inv_freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (len, half), device)?,
        Tensor::from_vec(sin, (len, half), device)?,
    ))
}

/// Rotate-half rotary embedding of `x: [b, heads, len, head_dim]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, TrainError> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let first = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let second = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[first, second], D::Minus1)?)
}

/// `[len, len]`: 0 where a position may attend, a large negative elsewhere.
fn causal_mask(len: usize, device: &Device) -> Result<Tensor, TrainError> {
    let values: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j <= i { 0.0 } else { -1e9 }))
        .collect();
    Ok(Tensor::from_vec(values, (len, len), device)?)
}

/// Grouped-query attention: each kv head serves `repeat` query heads.
fn repeat_kv(x: &Tensor, repeat: usize) -> Result<Tensor, TrainError> {
    let (b, kv, len, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, kv, repeat, len, d))?
        .contiguous()?
        .reshape((b, kv * repeat, len, d))?)
}
