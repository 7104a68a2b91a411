//! `mrrec train --once` (`mrrec train` and `run --stage train` are a
//! pipeline of one): the stage itself (buffer, rounds, announcements) is
//! `mrrec_train::stage`.

use anyhow::{Context, Result};
use mrrec_config::Config;
use mrrec_stream::{Bootstrap, KafkaClients, Shutdown};
use mrrec_train::stage::Once;
use mrrec_train::Decision;

/// `mrrec train --once`: one round over the rewards not yet trained on.
pub async fn once(config: &Config) -> Result<()> {
    let bootstrap = Bootstrap::resolve(config).context("starting the broker connection")?;
    let clients = KafkaClients::from_config(config, &bootstrap);
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let Once::Trained {
        rewards,
        reannounced,
        round,
    } = mrrec_train::stage::once(config, &clients, shutdown).await?
    else {
        eprintln!("no new rewards in the topic: nothing to train on");
        return Ok(());
    };
    eprintln!("read {rewards} rewards not yet trained on");
    if let Some((version, dropped)) = reannounced {
        println!(
            "v{version:04} was already trained on {dropped} of these rewards: announced it again"
        );
    }
    let Some(report) = round else {
        return Ok(());
    };
    match &report.decision {
        Decision::Published(v) => println!(
            "published v{:04} (parent v{:04}) at {}: {}",
            v.version,
            report.parent,
            v.path.display(),
            serde_json::to_string(&report.metrics)?
        ),
        Decision::Rejected(reason) => println!("rejected: {reason}"),
        Decision::NothingToLearn(reason) => println!("nothing to learn: {reason}"),
    }
    Ok(())
}
