//! A training round's bad input and failures: unusable trajectories are
//! skipped with their reason, and a candidate that diverges or does not load
//! is never published (the registry is left as it was).

use mrrec_policy::{init_model, ModelSpec, PolicyMeta, PolicyRegistry};
use mrrec_train::bench::{synthetic_catalog, synthetic_rewarded};
use mrrec_train::{Decision, GrpoSettings, TrainSettings};

fn registry(root: &std::path::Path) -> PolicyRegistry {
    let registry = PolicyRegistry::new(root.join("policy"));
    let staging = registry.staging_dir(0).unwrap();
    let meta = PolicyMeta::new(Some(0), None, "test");
    init_model(
        &staging,
        &ModelSpec::tiny(2),
        &synthetic_catalog(200, 1),
        &meta,
    )
    .unwrap();
    registry.publish(&staging, 0).unwrap();
    registry
}

fn settings() -> TrainSettings {
    TrainSettings {
        holdout_fraction: 0.25,
        ..TrainSettings::default()
    }
}

fn leftovers(registry: &PolicyRegistry) -> Vec<String> {
    std::fs::read_dir(registry.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".staging"))
        .collect()
}

#[test]
fn bad_trajectories_are_skipped_with_their_reason_and_the_rest_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = registry(tmp.path());
    let mut rewarded = synthetic_rewarded(12, 4, 3);
    rewarded[0].trajectory.segments[1].tokens = vec![999_999];
    rewarded[1].trajectory.segments[1].tokens = vec![1, 2, 3];
    rewarded[2].trajectory.policy_version = 7;
    rewarded[3].reward = f64::NAN;
    let duplicate = rewarded[4].clone();
    rewarded.push(duplicate);
    // No held-out judgement here: these rewards are noise.
    let settings = TrainSettings {
        holdout_fraction: 0.0,
        ..settings()
    };
    let report = mrrec_train::train_round(&registry, &rewarded, &settings, &|_| Ok(())).unwrap();
    let reasons: Vec<&str> = report.skipped.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(report.skipped.len(), 5, "{reasons:?}");
    for needle in [
        "outside the vocabulary",
        "differ from its text",
        "unknown policy version 7",
        "not a finite number",
        "duplicate trajectory",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "{needle}: {reasons:?}"
        );
    }
    let Decision::Published(version) = &report.decision else {
        panic!("{:?}", report.decision);
    };
    assert_eq!(version.version, 1);
    assert!(version.path.join("model.safetensors").is_file());
    assert!(version.path.join("tokenizer.json").is_file());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(version.path.join("policy.json")).unwrap())
            .unwrap();
    assert_eq!(meta["origin"], "grpo");
    assert_eq!(meta["parent"], 0);
    assert!(report.metrics.contains_key("loss"));
    assert!(leftovers(&registry).is_empty());
}

#[test]
fn a_candidate_that_does_not_load_is_never_published() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = registry(tmp.path());
    let rewarded = synthetic_rewarded(8, 4, 4);
    let report = mrrec_train::train_round(&registry, &rewarded, &settings(), &|_| {
        Err("the engine refuses it".into())
    })
    .unwrap();
    match &report.decision {
        Decision::Rejected(reason) => assert!(reason.contains("engine refuses"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(registry.next_version().unwrap(), 1);
    assert!(leftovers(&registry).is_empty());
}

#[test]
fn a_diverging_update_is_rolled_back() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = registry(tmp.path());
    let rewarded = synthetic_rewarded(8, 4, 5);
    let settings = TrainSettings {
        grpo: GrpoSettings {
            learning_rate: 1e38,
            max_grad_norm: 1e6,
            epochs: 2,
            minibatch: 8,
            ..GrpoSettings::default()
        },
        holdout_fraction: 0.0,
        ..TrainSettings::default()
    };
    let report = mrrec_train::train_round(&registry, &rewarded, &settings, &|_| Ok(())).unwrap();
    match &report.decision {
        Decision::Rejected(reason) => assert!(reason.contains("rolled back"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(registry.next_version().unwrap(), 1);
}

#[test]
fn groups_without_contrast_teach_nothing_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = registry(tmp.path());
    let mut rewarded = synthetic_rewarded(6, 4, 6);
    for r in &mut rewarded {
        r.reward = 1.0;
    }
    let report = mrrec_train::train_round(&registry, &rewarded, &settings(), &|_| Ok(())).unwrap();
    assert!(
        matches!(report.decision, Decision::NothingToLearn(_)),
        "{:?}",
        report.decision
    );
    assert_eq!(registry.next_version().unwrap(), 1);
}

#[test]
fn the_warm_start_lowers_the_loss_on_teacher_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = registry(tmp.path());
    let dir = registry.path(0);
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let shape = mrrec_train::LlamaShape::read(&dir).unwrap();
    let samples: Vec<_> = synthetic_rewarded(8, 2, 9)
        .iter()
        .map(|r| mrrec_train::build_sample(r, &tokenizer, shape.vocab_size, 4096).unwrap())
        .collect();
    let model = mrrec_train::PolicyModel::load(&dir, true).unwrap();
    let report = mrrec_train::sft::train(&model, &samples, 3e-3, 4, 8, 4096).unwrap();
    assert_eq!(report.steps, 8);
    assert!(
        report.loss_last_epoch < report.loss_first_epoch - 0.5,
        "{report:?}"
    );
}
