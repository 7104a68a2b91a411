//! `mrrec eval`: DESIGN §11's and §13's quality protocol
//! ([`mrrec_inprocess::eval`]); prints the rows and each policy row's
//! verdict against the rule.

use crate::cli::{EvalArgs, Targets};
use anyhow::Result;
use mrrec_config::Config;
use mrrec_eval::Row;
use mrrec_inprocess::eval::{EvalOptions, Targets as EvalTargets};

pub async fn run(config: &Config, args: &EvalArgs) -> Result<()> {
    let options = EvalOptions {
        data_dir: args.data_dir.clone(),
        items: args.items.clone(),
        events: args.events.clone(),
        requests: args.requests.clone(),
        out: args.out.clone(),
        plot: args.plot.clone(),
        rounds: args.rounds,
        train_users: args.train_users,
        dir: args.dir.clone(),
        sft: args.sft,
        tune_users: args.tune_users,
        sft_synthetic: args.sft_synthetic,
        sft_plans: args.sft_plans,
        policy_hidden: args.policy_hidden,
        policy_layers: args.policy_layers,
        sft_epochs: args.sft_epochs,
        targets: match args.targets {
            Targets::Valid => EvalTargets::Valid,
            Targets::Test => EvalTargets::Test,
        },
    };
    let rows = mrrec_inprocess::eval::run(config, &options).await?;
    print_table(&rows);
    for (row, vs) in rows.iter().filter_map(|r| Some((r, r.vs_rule?))) {
        let verdict = if vs.above_zero() {
            "above the rule"
        } else if vs.hi < 0.0 {
            "below the rule"
        } else {
            "no difference from the rule (the interval holds 0)"
        };
        eprintln!(
            "{}: NDCG@10 {:+.4} vs rule, 95% interval [{:+.4}, {:+.4}]: {verdict}",
            row.name, vs.diff, vs.lo, vs.hi
        );
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!("| row | Recall@10 | NDCG@10 | Recall@100 | NDCG@100 | NDCG@10 vs rule [95% CI] |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let vs = r.vs_rule.map_or(String::new(), |v| {
            format!("{:+.4} [{:+.4}, {:+.4}]", v.diff, v.lo, v.hi)
        });
        println!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {vs} |",
            r.name, r.recall_at_10, r.ndcg_at_10, r.recall_at_100, r.ndcg_at_100
        );
    }
}
