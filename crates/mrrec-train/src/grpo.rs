//! GRPO (DESIGN §6): group-normalised advantages, the PPO-clipped surrogate
//! on the ratio to the generating policy's log-probabilities, an optional
//! KL penalty to a reference, AdamW with global gradient-norm clipping — and
//! the off-policy estimate that judges a new version on held-out groups.

use crate::model::PolicyModel;
use crate::samples::Sample;
use crate::TrainError;
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;
use std::time::Instant;

/// How one update trains.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoSettings {
    pub learning_rate: f64,
    /// PPO clip ε on the probability ratio.
    pub clip_epsilon: f64,
    /// Weight of the KL penalty to the reference (0: none, no reference pass).
    pub kl_coef: f64,
    pub weight_decay: f64,
    /// Gradients are scaled down to this global L2 norm.
    pub max_grad_norm: f64,
    /// Passes over the update's trajectories.
    pub epochs: usize,
    /// Trajectories per optimizer step.
    pub minibatch: usize,
    /// Padded tokens per forward pass (memory bound; not a learning setting).
    pub chunk_tokens: usize,
    /// Seed of the minibatch order.
    pub seed: u64,
}

impl Default for GrpoSettings {
    fn default() -> Self {
        Self {
            learning_rate: 3e-4,
            clip_epsilon: 0.2,
            kl_coef: 0.0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            epochs: 1,
            minibatch: 256,
            chunk_tokens: 8192,
            seed: 0,
        }
    }
}

/// `(r − mean) / std` within each request's group; 0 for a group of one or
/// one whose rewards are all equal (it says nothing about what is better).
pub fn advantages(samples: &[Sample]) -> Vec<f64> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        groups.entry(&s.request_id).or_default().push(i);
    }
    let mut out = vec![0.0; samples.len()];
    for members in groups.values() {
        if members.len() < 2 {
            continue;
        }
        let n = members.len() as f64;
        let mean = members.iter().map(|&i| samples[i].reward).sum::<f64>() / n;
        let var = members
            .iter()
            .map(|&i| (samples[i].reward - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = var.sqrt();
        if std < 1e-9 {
            continue;
        }
        for &i in members {
            out[i] = (samples[i].reward - mean) / std;
        }
    }
    out
}

/// Indices of `samples` cut into forward passes of at most `chunk_tokens`
/// padded tokens (similar lengths together).
pub(crate) fn chunks(
    samples: &[Sample],
    indices: &[usize],
    chunk_tokens: usize,
) -> Vec<Vec<usize>> {
    let mut sorted = indices.to_vec();
    sorted.sort_by_key(|&i| samples[i].tokens.len());
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in sorted {
        let len = samples[i].tokens.len();
        if !current.is_empty() && (current.len() + 1) * len > chunk_tokens {
            out.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Per-token log-probabilities of every sample's scored tokens under
/// `model` (no gradient is kept).
pub fn scored_logprobs(
    model: &PolicyModel,
    samples: &[Sample],
    indices: &[usize],
    chunk_tokens: usize,
) -> Result<BTreeMap<usize, Vec<f32>>, TrainError> {
    let mut out = BTreeMap::new();
    for chunk in chunks(samples, indices, chunk_tokens) {
        let (tokens, positions) = batch_of(samples, &chunk);
        let values = model
            .token_logprobs(&tokens, &positions)?
            .detach()
            .to_vec1::<f32>()?;
        let mut offset = 0;
        for &i in &chunk {
            let n = samples[i].scored.len();
            out.insert(i, values[offset..offset + n].to_vec());
            offset += n;
        }
    }
    Ok(out)
}

pub(crate) fn batch_of(
    samples: &[Sample],
    chunk: &[usize],
) -> (Vec<Vec<u32>>, Vec<(usize, usize)>) {
    let tokens = chunk.iter().map(|&i| samples[i].tokens.clone()).collect();
    let positions = chunk
        .iter()
        .enumerate()
        .flat_map(|(b, &i)| samples[i].scored.iter().map(move |&t| (b, t)))
        .collect();
    (tokens, positions)
}

/// AdamW over a model's variables.
pub struct AdamW {
    lr: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step: i32,
    moments: Vec<(Tensor, Tensor)>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("lr", &self.lr)
            .field("step", &self.step)
            .finish()
    }
}

impl AdamW {
    pub fn new(vars: &[&Var], lr: f64, weight_decay: f64) -> Result<Self, TrainError> {
        let moments = vars
            .iter()
            .map(|v| Ok((v.zeros_like()?, v.zeros_like()?)))
            .collect::<Result<_, TrainError>>()?;
        Ok(Self {
            lr,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            moments,
        })
    }

    /// One step with `grads` (same order as the variables).
    pub fn step(&mut self, vars: &[&Var], grads: &[Tensor]) -> Result<(), TrainError> {
        self.step += 1;
        let c1 = 1.0 - self.beta1.powi(self.step);
        let c2 = 1.0 - self.beta2.powi(self.step);
        for ((var, grad), (m, v)) in vars.iter().zip(grads).zip(self.moments.iter_mut()) {
            *m = ((&*m * self.beta1)? + (grad * (1.0 - self.beta1))?)?;
            *v = ((&*v * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
            let m_hat = (&*m / c1)?;
            let v_hat = (&*v / c2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
            var.set(&(decayed - (update * self.lr)?)?)?;
        }
        Ok(())
    }
}

/// What one update did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateReport {
    pub trajectories: usize,
    /// Trajectories with a non-zero advantage (the ones that teach).
    pub trained: usize,
    pub tokens: usize,
    pub scored_tokens: usize,
    pub steps: usize,
    /// Mean surrogate loss over steps.
    pub loss: f64,
    /// Largest gradient norm before clipping.
    pub grad_norm: f64,
    /// Share of scored tokens whose ratio was clipped.
    pub clip_fraction: f64,
    pub seconds: f64,
}

/// Runs GRPO over `samples` on the trainable `model`. `old` holds each
/// sample's scored log-probabilities under its generating version and
/// `reference` (needed when `kl_coef > 0`) under the reference policy.
pub fn update(
    model: &PolicyModel,
    optimizer: &mut AdamW,
    samples: &[Sample],
    old: &BTreeMap<usize, Vec<f32>>,
    reference: Option<&BTreeMap<usize, Vec<f32>>>,
    settings: &GrpoSettings,
) -> Result<UpdateReport, TrainError> {
    let started = Instant::now();
    let vars: Vec<&Var> = model.vars().map(|(_, v)| v).collect();
    if vars.is_empty() {
        return Err(TrainError::Input("the model is not trainable".into()));
    }
    let advantages = advantages(samples);
    let use_kl = settings.kl_coef > 0.0;
    let mut teaching: Vec<usize> = (0..samples.len())
        .filter(|&i| use_kl || advantages[i] != 0.0)
        .collect();
    let mut report = UpdateReport {
        trajectories: samples.len(),
        trained: teaching.len(),
        tokens: samples.iter().map(|s| s.tokens.len()).sum(),
        scored_tokens: samples.iter().map(|s| s.scored.len()).sum(),
        ..UpdateReport::default()
    };
    let mut rng = settings.seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let threads = workers();
    let mut loss_sum = 0.0;
    let mut clipped = 0usize;
    let mut counted = 0usize;
    for _ in 0..settings.epochs.max(1) {
        shuffle(&mut teaching, &mut rng);
        for minibatch in teaching.chunks(settings.minibatch.max(1)) {
            let n = minibatch.len() as f64;
            let loss_of = |chunk: &[usize]| -> Result<(Tensor, (f64, usize, usize)), TrainError> {
                let (tokens, positions) = batch_of(samples, chunk);
                let logp = model.token_logprobs(&tokens, &positions)?;
                let mut old_values = Vec::with_capacity(positions.len());
                let mut adv = Vec::with_capacity(positions.len());
                let mut weight = Vec::with_capacity(positions.len());
                let mut ref_values = Vec::new();
                for &i in chunk {
                    let old_i = old.get(&i).ok_or_else(|| {
                        TrainError::Input(format!("no old log-probabilities for sample {i}"))
                    })?;
                    old_values.extend_from_slice(old_i);
                    let w = 1.0 / (samples[i].scored.len() as f64 * n);
                    adv.extend(std::iter::repeat_n(advantages[i] as f32, old_i.len()));
                    weight.extend(std::iter::repeat_n(w as f32, old_i.len()));
                    if use_kl {
                        let r = reference.and_then(|r| r.get(&i)).ok_or_else(|| {
                            TrainError::Input(format!("no reference log-probabilities for {i}"))
                        })?;
                        ref_values.extend_from_slice(r);
                    }
                }
                let len = old_values.len();
                let device = logp.device().clone();
                let old_t = Tensor::from_vec(old_values, len, &device)?;
                let adv_t = Tensor::from_vec(adv, len, &device)?;
                let weight_t = Tensor::from_vec(weight, len, &device)?;
                let ratio = (&logp - &old_t)?.exp()?;
                let eps = settings.clip_epsilon;
                let clipped_ratio = ratio.clamp(1.0 - eps, 1.0 + eps)?;
                let surrogate = (&ratio * &adv_t)?.minimum(&(&clipped_ratio * &adv_t)?)?;
                let mut per_token = surrogate.neg()?;
                if use_kl {
                    let ref_t = Tensor::from_vec(ref_values, len, &device)?;
                    // k3 estimator: e^(ref − logp) − (ref − logp) − 1 ≥ 0.
                    let diff = (&ref_t - &logp)?;
                    let kl = ((diff.exp()? - &diff)? - 1.0)?;
                    per_token = (per_token + (kl * settings.kl_coef)?)?;
                }
                let loss = (per_token * &weight_t)?.sum_all()?;
                let loss_value = f64::from(loss.to_scalar::<f32>()?);
                if !loss_value.is_finite() {
                    return Err(TrainError::NonFinite(format!(
                        "the loss became {loss_value}"
                    )));
                }
                let ratios = ratio.detach().to_vec1::<f32>()?;
                let outside = ratios
                    .iter()
                    .filter(|r| (f64::from(**r) - 1.0).abs() > eps)
                    .count();
                Ok((loss, (loss_value, outside, ratios.len())))
            };
            let (grads, counts) = minibatch_grads(
                samples,
                minibatch,
                settings.chunk_tokens,
                threads,
                &vars,
                loss_of,
            )?;
            let mut step_loss = 0.0;
            for (loss_value, outside, all) in counts {
                step_loss += loss_value;
                clipped += outside;
                counted += all;
            }
            let norm = clipped_step(optimizer, &vars, grads, settings.max_grad_norm)?;
            report.grad_norm = report.grad_norm.max(norm);
            report.steps += 1;
            loss_sum += step_loss;
        }
    }
    report.loss = if report.steps > 0 {
        loss_sum / report.steps as f64
    } else {
        0.0
    };
    report.clip_fraction = if counted > 0 {
        clipped as f64 / counted as f64
    } else {
        0.0
    };
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One thread's share of a minibatch: its summed gradients (one slot per
/// variable) and what `loss_of` counted per chunk.
type Share<T> = (Vec<Option<Tensor>>, Vec<T>);

/// Threads a minibatch's forward and backward passes run on: the cores
/// there are, at most 4. candle's CPU kernels outside matmul run on one
/// thread, so chunks on separate threads are what uses a second core.
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// The summed gradients of one minibatch, computed on up to `workers`
/// threads. The minibatch's samples are dealt out by length (each worker
/// gets a similar share of long and short ones) and each worker cuts its
/// share into chunks of `chunk_tokens / workers` padded tokens, so the
/// tokens in flight stay within `chunk_tokens`. `loss_of` turns one chunk
/// into a loss (and whatever the caller counts); the gradients are summed
/// in worker order, so a run is repeatable for a given number of workers.
/// The outputs come back in worker order, then chunk order.
pub(crate) fn minibatch_grads<T: Send>(
    samples: &[Sample],
    minibatch: &[usize],
    chunk_tokens: usize,
    workers: usize,
    vars: &[&Var],
    loss_of: impl Fn(&[usize]) -> Result<(Tensor, T), TrainError> + Sync,
) -> Result<(Vec<Option<Tensor>>, Vec<T>), TrainError> {
    let workers = workers.clamp(1, minibatch.len().max(1));
    let mut sorted = minibatch.to_vec();
    sorted.sort_by_key(|&i| samples[i].tokens.len());
    let shares: Vec<Vec<usize>> = (0..workers)
        .map(|w| sorted.iter().skip(w).step_by(workers).copied().collect())
        .collect();
    let cap = (chunk_tokens / workers).max(1);
    let work = |share: &[usize]| -> Result<Share<T>, TrainError> {
        let mut grads = vec![None; vars.len()];
        let mut outs = Vec::new();
        for chunk in chunks(samples, share, cap) {
            let (loss, out) = loss_of(&chunk)?;
            accumulate(&mut grads, vars, &loss)?;
            outs.push(out);
        }
        Ok((grads, outs))
    };
    let results: Vec<Result<Share<T>, TrainError>> = if workers == 1 {
        vec![work(&shares[0])]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = shares
                .iter()
                .map(|share| scope.spawn(|| work(share)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(TrainError::Input("a training thread panicked".into()))
                    })
                })
                .collect()
        })
    };
    let mut sums: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut outs = Vec::new();
    for result in results {
        let (grads, out) = result?;
        for (slot, g) in sums.iter_mut().zip(grads) {
            if let Some(g) = g {
                *slot = Some(match slot.take() {
                    Some(sum) => (sum + g)?,
                    None => g,
                });
            }
        }
        outs.extend(out);
    }
    Ok((sums, outs))
}

/// Adds `loss`'s gradients to the running sums (one slot per variable).
pub(crate) fn accumulate(
    sums: &mut [Option<Tensor>],
    vars: &[&Var],
    loss: &Tensor,
) -> Result<(), TrainError> {
    let store = loss.backward()?;
    for (slot, var) in sums.iter_mut().zip(vars) {
        if let Some(g) = store.get(var.as_tensor()) {
            *slot = Some(match slot.take() {
                Some(sum) => (sum + g)?,
                None => g.clone(),
            });
        }
    }
    Ok(())
}

/// One optimizer step on the summed gradients, scaled down to `max_norm`.
/// Returns the norm before clipping; a non-finite norm is an error.
pub(crate) fn clipped_step(
    optimizer: &mut AdamW,
    vars: &[&Var],
    sums: Vec<Option<Tensor>>,
    max_norm: f64,
) -> Result<f64, TrainError> {
    let grads: Vec<Tensor> = sums
        .into_iter()
        .zip(vars)
        .map(|(g, v)| g.map_or_else(|| v.zeros_like(), Ok))
        .collect::<Result<_, _>>()?;
    let norm = global_norm(&grads)?;
    if !norm.is_finite() {
        return Err(TrainError::NonFinite(format!(
            "the gradient norm is {norm}"
        )));
    }
    let scale = if norm > max_norm {
        max_norm / norm
    } else {
        1.0
    };
    let grads: Vec<Tensor> = grads.iter().map(|g| g * scale).collect::<Result<_, _>>()?;
    optimizer.step(vars, &grads)?;
    Ok(norm)
}

/// L2 norm of all gradients together.
pub fn global_norm(grads: &[Tensor]) -> Result<f64, TrainError> {
    let mut sum = 0.0f64;
    for g in grads {
        sum += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    Ok(sum.sqrt())
}

pub(crate) fn shuffle(items: &mut [usize], state: &mut u64) {
    for i in (1..items.len()).rev() {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = ((*state >> 33) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// What the held-out groups say about a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldOutEstimate {
    /// Mean reward of the logged trajectories (the generating policy's).
    pub logged: f64,
    /// Estimated mean reward under the candidate.
    pub estimate: f64,
    /// Standard error of `estimate − logged` across groups (0 for one group).
    pub stderr: f64,
    pub groups: usize,
}

/// Self-normalised importance estimate of the mean reward a policy would
/// earn on held-out groups: within each request's group the logged
/// trajectories are reweighted by `exp(log p_new(τ) − log p_old(τ))`
/// (whole-trajectory log-probabilities). Averages over groups of two or
/// more; `None` when there is no such group.
pub fn offpolicy_estimate(
    samples: &[Sample],
    indices: &[usize],
    old: &BTreeMap<usize, Vec<f32>>,
    new: &BTreeMap<usize, Vec<f32>>,
) -> Option<HeldOutEstimate> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &i in indices {
        groups.entry(&samples[i].request_id).or_default().push(i);
    }
    // (logged, estimate) per group.
    let mut per_group: Vec<(f64, f64)> = Vec::new();
    for members in groups.values().filter(|m| m.len() >= 2) {
        let log_ratios: Vec<f64> = members
            .iter()
            .map(|i| {
                let sum = |m: &BTreeMap<usize, Vec<f32>>| {
                    m.get(i)
                        .map_or(0.0, |v| v.iter().map(|x| f64::from(*x)).sum::<f64>())
                };
                sum(new) - sum(old)
            })
            .collect();
        let max = log_ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = log_ratios.iter().map(|r| (r - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let n = members.len() as f64;
        let logged = members.iter().map(|&i| samples[i].reward).sum::<f64>() / n;
        let estimate = members
            .iter()
            .zip(&weights)
            .map(|(&i, w)| w / total * samples[i].reward)
            .sum::<f64>();
        per_group.push((logged, estimate));
    }
    if per_group.is_empty() {
        return None;
    }
    let count = per_group.len() as f64;
    let logged = per_group.iter().map(|g| g.0).sum::<f64>() / count;
    let estimate = per_group.iter().map(|g| g.1).sum::<f64>() / count;
    let mean_diff = estimate - logged;
    let stderr = if per_group.len() > 1 {
        let var = per_group
            .iter()
            .map(|(l, e)| (e - l - mean_diff).powi(2))
            .sum::<f64>()
            / (count - 1.0);
        (var / count).sqrt()
    } else {
        0.0
    };
    Some(HeldOutEstimate {
        logged,
        estimate,
        stderr,
        groups: per_group.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(request: &str, reward: f64) -> Sample {
        Sample {
            request_id: request.into(),
            trajectory_id: format!("{request}-{reward}"),
            policy_version: 0,
            tokens: vec![1, 2, 3],
            scored: vec![2],
            reward,
        }
    }

    #[test]
    fn advantages_are_normalised_within_groups_and_zero_without_contrast() {
        let samples = vec![
            sample("a", 1.0),
            sample("a", 3.0),
            sample("b", 2.0),
            sample("b", 2.0),
            sample("c", 5.0),
        ];
        let adv = advantages(&samples);
        assert!((adv[0] + 1.0).abs() < 1e-12 && (adv[1] - 1.0).abs() < 1e-12);
        assert_eq!(&adv[2..], &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn the_estimate_follows_the_probability_moved_to_better_trajectories() {
        let samples = vec![sample("a", 0.0), sample("a", 10.0)];
        let old: BTreeMap<usize, Vec<f32>> = [(0, vec![-1.0]), (1, vec![-1.0])].into();
        let better: BTreeMap<usize, Vec<f32>> = [(0, vec![-2.0]), (1, vec![-0.5])].into();
        let worse: BTreeMap<usize, Vec<f32>> = [(0, vec![-0.5]), (1, vec![-2.0])].into();
        let up = offpolicy_estimate(&samples, &[0, 1], &old, &better).unwrap();
        let down = offpolicy_estimate(&samples, &[0, 1], &old, &worse).unwrap();
        assert_eq!(up.logged, 5.0);
        assert!(up.estimate > 5.0 && down.estimate < 5.0, "{up:?} {down:?}");
        let same = offpolicy_estimate(&samples, &[0, 1], &old, &old).unwrap();
        assert_eq!((same.logged, same.estimate, same.groups), (5.0, 5.0, 1));
        assert!(offpolicy_estimate(&samples, &[0], &old, &better).is_none());
    }

    #[test]
    fn the_standard_error_spreads_with_the_groups() {
        // Two groups moved the same way: no spread. Moved opposite ways: spread.
        let samples = vec![
            sample("a", 0.0),
            sample("a", 10.0),
            sample("b", 0.0),
            sample("b", 10.0),
        ];
        let old: BTreeMap<usize, Vec<f32>> = (0..4).map(|i| (i, vec![-1.0])).collect();
        let same: BTreeMap<usize, Vec<f32>> = [
            (0, vec![-2.0]),
            (1, vec![-0.5]),
            (2, vec![-2.0]),
            (3, vec![-0.5]),
        ]
        .into();
        let opposite: BTreeMap<usize, Vec<f32>> = [
            (0, vec![-2.0]),
            (1, vec![-0.5]),
            (2, vec![-0.5]),
            (3, vec![-2.0]),
        ]
        .into();
        let agreed = offpolicy_estimate(&samples, &[0, 1, 2, 3], &old, &same).unwrap();
        assert_eq!(agreed.groups, 2);
        assert!(agreed.stderr.abs() < 1e-12, "{agreed:?}");
        let split = offpolicy_estimate(&samples, &[0, 1, 2, 3], &old, &opposite).unwrap();
        assert!((split.estimate - 5.0).abs() < 1e-9, "{split:?}");
        assert!(split.stderr > 1.0, "{split:?}");
    }

    #[test]
    fn chunks_respect_the_token_budget() {
        let mut samples: Vec<Sample> = (0..10).map(|i| sample("a", f64::from(i))).collect();
        samples[3].tokens = vec![0; 50];
        let all: Vec<usize> = (0..10).collect();
        let cut = chunks(&samples, &all, 12);
        assert_eq!(cut.iter().map(Vec::len).sum::<usize>(), 10);
        for chunk in &cut {
            let longest = chunk
                .iter()
                .map(|&i| samples[i].tokens.len())
                .max()
                .unwrap();
            assert!(chunk.len() == 1 || chunk.len() * longest <= 12, "{chunk:?}");
        }
    }
}
