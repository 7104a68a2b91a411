//! `mrrec model init`: builds a policy directory from the catalog.

use crate::cli::ModelInitArgs;
use anyhow::{Context, Result};
use mrrec_messages::Item;
use mrrec_policy::{init_model, ModelSpec, PolicyMeta};

pub async fn init(config: &mrrec_config::Config, args: &ModelInitArgs) -> Result<()> {
    if args.if_missing {
        let published = args
            .out
            .parent()
            .map(|registry| mrrec_policy::PolicyRegistry::new(registry).latest())
            .transpose()?
            .flatten();
        if mrrec_policy::check_model_dir(&args.out).is_ok() || published.is_some() {
            println!(
                "a policy is already there ({}): nothing to do",
                published.map_or(args.out.display().to_string(), |v| format!(
                    "v{:04} published",
                    v.version
                ))
            );
            return Ok(());
        }
    }
    let items: Vec<Item> = match (&args.catalog, &args.data_dir) {
        (Some(path), _) => {
            let (items, report) = mrrec_datasets::read_jsonl(path)?;
            mrrec_inprocess::produce::print_read_report(&report);
            items
        }
        (None, Some(dir)) => mrrec_datasets::ml100k(dir)?.items,
        (None, None) => Vec::new(),
    };
    let texts: Vec<String> = items.iter().map(mrrec_inprocess::item_text).collect();
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
        trained_on: Default::default(),
    };
    let report = init_model(&args.out, &spec, &texts, &meta)
        .with_context(|| format!("building the policy model in {}", args.out.display()))?;
    if args.sft > 0 {
        mrrec_inprocess::warm_start(config, &args.out, &items, args.sft, args.sft_epochs, &meta)
            .await?;
    }
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
