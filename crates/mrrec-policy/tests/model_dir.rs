//! `init_model` writes a directory the start-up checks accept, and the checks
//! name the file and the fix for each way a directory can be broken.

use mrrec_policy::{check_model_dir, init_model, ModelSpec, PolicyMeta};
use std::path::Path;

fn small_spec() -> ModelSpec {
    ModelSpec {
        vocab_size: 512,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 1,
        num_heads: 2,
        num_kv_heads: 2,
        ..ModelSpec::default()
    }
}

fn meta() -> PolicyMeta {
    PolicyMeta {
        version: Some(0),
        parent: None,
        origin: "init".into(),
        created_ts: 0,
        metrics: Default::default(),
        trained_on: Default::default(),
    }
}

fn built(dir: &Path) {
    let catalog = vec!["Toy Story (1995) Animation Children's Comedy".to_owned()];
    let report = init_model(dir, &small_spec(), &catalog, &meta()).unwrap();
    assert!(
        report.vocab_size > 256 && report.vocab_size <= 512,
        "{report:?}"
    );
}

#[test]
fn an_initialised_directory_passes_the_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v0000");
    built(&dir);
    for file in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
        "policy.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let info = check_model_dir(&dir).unwrap();
    assert_eq!(info.version, Some(0));
    assert_eq!(info.architecture, "LlamaForCausalLM");
    assert_eq!(info.eos_token, "<|endoftext|>");
    assert!(info.parameters > 0);
    // Never overwritten.
    let again = init_model(&dir, &small_spec(), &[], &meta()).unwrap_err();
    assert!(again.to_string().contains("not empty"), "{again}");
}

#[test]
fn the_same_seed_gives_the_same_weights_and_another_seed_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    built(&a);
    built(&b);
    let other = ModelSpec {
        seed: 1,
        ..small_spec()
    };
    init_model(
        &c,
        &other,
        &["Toy Story (1995) Animation Children's Comedy".to_owned()],
        &meta(),
    )
    .unwrap();
    let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
    assert_eq!(
        std::fs::read(a.join("tokenizer.json")).unwrap(),
        std::fs::read(b.join("tokenizer.json")).unwrap()
    );
}

fn error_for(dir: &Path) -> String {
    check_model_dir(dir).unwrap_err().to_string()
}

#[test]
fn each_broken_file_is_named_with_a_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = error_for(&missing);
    assert!(
        err.contains("no such directory") && err.contains("mrrec model init"),
        "{err}"
    );

    let dir = tmp.path().join("m");
    built(&dir);

    // Truncated weights.
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = error_for(&dir);
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
    std::fs::write(&weights, &bytes).unwrap();

    // A tokenizer without a decoder.
    let tok_path = dir.join("tokenizer.json");
    let tok = std::fs::read_to_string(&tok_path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&tok).unwrap();
    json["decoder"] = serde_json::Value::Null;
    std::fs::write(&tok_path, json.to_string()).unwrap();
    let err = error_for(&dir);
    assert!(
        err.contains("tokenizer.json") && err.contains("no decoder") && err.contains("Fix"),
        "{err}"
    );
    std::fs::write(&tok_path, &tok).unwrap();

    // A config the engine cannot use.
    let config_path = dir.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, "{\"architectures\": [\"LlamaForCausalLM\"]}").unwrap();
    let err = error_for(&dir);
    assert!(
        err.contains("config.json") && err.contains("vocab_size"),
        "{err}"
    );
    std::fs::write(&config_path, "not json").unwrap();
    let err = error_for(&dir);
    assert!(
        err.contains("config.json") && err.contains("not valid JSON"),
        "{err}"
    );
    std::fs::write(&config_path, &config).unwrap();

    // Missing weights.
    std::fs::remove_file(&weights).unwrap();
    let err = error_for(&dir);
    assert!(
        err.contains("model.safetensors") && err.contains("missing"),
        "{err}"
    );
    std::fs::write(&weights, &bytes).unwrap();

    check_model_dir(&dir).unwrap();
}
