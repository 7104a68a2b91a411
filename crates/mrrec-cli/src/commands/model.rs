//! `mrrec model init`: builds a policy directory from the catalog.

use crate::cli::ModelInitArgs;
use anyhow::{Context, Result};
use mrrec_messages::Item;
use mrrec_policy::{init_model, ModelSpec, PolicyMeta};

/// Training text for the tokenizer from one item: title, categories, description.
pub(crate) fn item_text(item: &Item) -> String {
    let mut text = item.title.clone();
    if !item.categories.is_empty() {
        text.push_str(" | ");
        text.push_str(&item.categories.join(", "));
    }
    if let Some(description) = &item.description {
        text.push_str(" | ");
        text.push_str(description);
    }
    text
}

pub fn init(args: &ModelInitArgs) -> Result<()> {
    let items: Vec<Item> = match (&args.catalog, &args.data_dir) {
        (Some(path), _) => mrrec_datasets::read_jsonl(path)?,
        (None, Some(dir)) => mrrec_datasets::ml100k(dir)?.items,
        (None, None) => Vec::new(),
    };
    let texts: Vec<String> = items.iter().map(item_text).collect();
    let spec = ModelSpec {
        vocab_size: args.vocab_size,
        hidden_size: args.hidden_size,
        intermediate_size: args.intermediate_size,
        num_layers: args.layers,
        num_heads: args.heads,
        num_kv_heads: args.kv_heads,
        max_position_embeddings: args.max_positions,
        seed: args.seed,
        ..ModelSpec::default()
    };
    let meta = PolicyMeta {
        version: mrrec_policy::check::version_from_dir_name(&args.out),
        parent: None,
        origin: "init".into(),
        created_ts: mrrec_policy::now_ms(),
        metrics: Default::default(),
    };
    let report = init_model(&args.out, &spec, &texts, &meta)
        .with_context(|| format!("building the policy model in {}", args.out.display()))?;
    mrrec_policy::check_model_dir(&args.out)?;
    println!(
        "policy model written to {}: {} parameters, vocabulary {} (trained on {} catalog items + protocol text)",
        args.out.display(),
        report.parameters,
        report.vocab_size,
        items.len()
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
