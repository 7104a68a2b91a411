//! Supervised warm start (DESIGN §7): maximise the log-likelihood of the
//! tokens a teacher policy wrote (model segments only), so a fresh policy
//! starts from protocol-shaped, request-aware answers instead of noise.

use crate::grpo::AdamW;
use crate::model::PolicyModel;
use crate::samples::Sample;
use crate::TrainError;
use candle_core::{Tensor, Var};
use std::time::Instant;

/// What a warm start did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SftReport {
    pub samples: usize,
    pub steps: usize,
    /// Mean negative log-likelihood per model token, first and last epoch.
    pub loss_first_epoch: f64,
    pub loss_last_epoch: f64,
    pub seconds: f64,
}

/// Trains `model` on `samples` for `epochs` passes of `minibatch` samples.
pub fn train(
    model: &PolicyModel,
    samples: &[Sample],
    learning_rate: f64,
    epochs: usize,
    minibatch: usize,
    chunk_tokens: usize,
) -> Result<SftReport, TrainError> {
    let started = Instant::now();
    let vars: Vec<&Var> = model.vars().map(|(_, v)| v).collect();
    let mut optimizer = AdamW::new(&vars, learning_rate, 0.0)?;
    let mut report = SftReport {
        samples: samples.len(),
        ..SftReport::default()
    };
    let mut order: Vec<usize> = (0..samples.len()).collect();
    let mut state = 0x853C_49E6_748F_EA9Bu64;
    let threads = crate::grpo::workers();
    for epoch in 0..epochs.max(1) {
        crate::grpo::shuffle(&mut order, &mut state);
        let (mut loss_sum, mut tokens) = (0.0, 0usize);
        for batch in order.chunks(minibatch.max(1)) {
            let n = batch.len() as f64;
            let loss_of = |chunk: &[usize]| -> Result<(Tensor, (f64, usize)), TrainError> {
                let (ids, positions) = crate::grpo::batch_of(samples, chunk);
                let logp = model.token_logprobs(&ids, &positions)?;
                let weights: Vec<f32> = chunk
                    .iter()
                    .flat_map(|&i| {
                        let w = (1.0 / (samples[i].scored.len() as f64 * n)) as f32;
                        std::iter::repeat_n(w, samples[i].scored.len())
                    })
                    .collect();
                let len = weights.len();
                let weights = Tensor::from_vec(weights, len, logp.device())?;
                let loss = (logp.neg()? * &weights)?.sum_all()?;
                let values = logp.detach().to_vec1::<f32>()?;
                let nll = -values.iter().map(|v| f64::from(*v)).sum::<f64>();
                Ok((loss, (nll, values.len())))
            };
            let (grads, counts) = crate::grpo::minibatch_grads(
                samples,
                batch,
                chunk_tokens,
                threads,
                &vars,
                loss_of,
            )?;
            for (nll, n) in counts {
                loss_sum += nll;
                tokens += n;
            }
            crate::grpo::clipped_step(&mut optimizer, &vars, grads, 1.0)?;
            report.steps += 1;
        }
        let mean = loss_sum / tokens.max(1) as f64;
        if epoch == 0 {
            report.loss_first_epoch = mean;
        }
        report.loss_last_epoch = mean;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
