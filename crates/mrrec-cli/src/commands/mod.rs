//! One function per command; commands whose stage is not built yet say so.

mod bench;
mod demo;
mod eval;
mod llm;
mod load;
mod memory;
mod model;
mod pipeline;
mod recommend;
mod run;
mod topics;
mod train;

use crate::cli::{
    BenchKind, Cli, Command, LlmCommand, LoadCommand, MemoryCommand, ModelCommand, StageName,
    TopicsCommand,
};
use anyhow::{bail, Result};
use mrrec_config::Config;

/// Loads the configuration (every problem reported at once) and runs the command.
pub async fn dispatch(cli: Cli) -> Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    tracing::debug!(?config, "configuration");
    match cli.command {
        Command::Topics(TopicsCommand::Create) => topics::create(&config).await,
        Command::Run(args) => match (args.stage, args.pipeline) {
            (Some(stage), _) => run::stage(&config, stage).await,
            (None, Some(path)) => {
                let pipeline =
                    mrrec_config::Pipeline::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
                pipeline::run(&config, &pipeline).await
            }
            (None, None) => bail!("give --stage or --pipeline"),
        },
        Command::Demo {
            data_dir,
            dir,
            seed,
        } => demo::run(&config, data_dir.as_deref(), &dir, seed).await,
        Command::Load(LoadCommand::Ml100k { data_dir }) => {
            load::produce(&config, &mrrec_datasets::ml100k(&data_dir)?).await
        }
        Command::Load(LoadCommand::Jsonl { items, events }) => {
            let (dataset, report) = mrrec_datasets::jsonl(&items, &events)?;
            mrrec_inprocess::produce::print_read_report(&report);
            load::produce(&config, &dataset).await
        }
        Command::Memory(MemoryCommand::Show { user }) => memory::show(&config, &user).await,
        Command::Memory(MemoryCommand::Search { user, query, k }) => {
            memory::search(&config, &user, &query, k).await
        }
        Command::Recommend {
            user,
            query,
            k,
            timeout_ms,
        } => {
            recommend::ask(
                &config,
                &user,
                query.as_deref(),
                k,
                std::time::Duration::from_millis(timeout_ms),
            )
            .await
        }
        Command::Model(ModelCommand::Init(args)) => model::init(&config, &args).await,
        Command::Llm(LlmCommand::Serve { listen, no_follow }) => {
            llm::serve(&config, listen.as_deref(), !no_follow).await
        }
        Command::Train { once: true } => train::once(&config).await,
        Command::Train { once: false } => run::stage(&config, StageName::Train).await,
        Command::Eval(args) => eval::run(&config, &args).await,
        Command::Bench {
            which,
            events,
            duration,
            users,
            entries,
            queries,
            seed,
            llm_only,
            calls,
            rate,
            requests,
            warmup,
            max_steps,
            trajectories,
            data_dir,
            rounds,
            train_users,
            heldout_users,
        } => match which {
            BenchKind::Ingest => match duration {
                Some(duration) => bench::soak(&config, duration, users, seed).await,
                None => bench::ingest(&config, events, seed).await,
            },
            BenchKind::Retrieve => bench::retrieve(entries, queries, seed),
            BenchKind::Reopen => bench::reopen(events, seed).await,
            BenchKind::Recommend if llm_only => bench::llm_only(&config, calls).await,
            BenchKind::Recommend => {
                let request = mrrec_inprocess::bench::recommend::RecommendBench {
                    rate,
                    requests,
                    warmup,
                    events,
                    seed,
                    max_steps: Some(max_steps),
                };
                bench::recommend(&config, request).await
            }
            BenchKind::Train => bench::train(&config, trajectories, seed),
            BenchKind::Learn => {
                let learn = mrrec_inprocess::bench::learn::LearnBench {
                    data_dir: bench::learn_data_dir(data_dir.as_deref())?,
                    rounds,
                    train_users,
                    heldout_users,
                };
                bench::learn(&config, learn).await
            }
        },
    }
}
