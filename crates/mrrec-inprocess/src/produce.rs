//! Putting a dataset on the input topics, with progress on stderr.

use crate::LoopError;
use indicatif::{ProgressBar, ProgressStyle};
use mrrec_messages::{encode, Event, Item, MessageError, Topic};
use mrrec_stream::{OutgoingRecord, Publisher};

/// The records that put `items` and `events` on their topics (key: item id, user id).
pub fn records(
    prefix: &str,
    items: &[Item],
    events: &[Event],
) -> Result<Vec<OutgoingRecord>, MessageError> {
    let mut records = Vec::with_capacity(items.len() + events.len());
    for item in items {
        records.push(OutgoingRecord {
            topic: Topic::Items.name(prefix),
            key: Some(item.item_id.clone().into_bytes()),
            payload: encode(item)?,
        });
    }
    for event in events {
        records.push(OutgoingRecord {
            topic: Topic::Events.name(prefix),
            key: Some(event.user_id.clone().into_bytes()),
            payload: encode(event)?,
        });
    }
    Ok(records)
}

/// A progress bar for `len` steps, on stderr.
pub fn progress_bar(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}

/// Produces `records` in chunks, waiting for every acknowledgement, with progress.
pub async fn publish_with_progress(
    publisher: &Publisher,
    records: Vec<OutgoingRecord>,
    message: &str,
) -> Result<(), LoopError> {
    let bar = progress_bar(records.len() as u64, message);
    let mut rest = records;
    while !rest.is_empty() {
        let chunk: Vec<OutgoingRecord> = rest.drain(..rest.len().min(10_000)).collect();
        let n = chunk.len() as u64;
        publisher
            .publish_all(chunk)
            .await
            .map_err(|(source, unsent)| LoopError::Publish {
                what: format!("{message}: {} records not acknowledged", unsent.len()),
                source,
            })?;
        bar.inc(n);
    }
    bar.finish_and_clear();
    Ok(())
}

/// What reading JSON lines skipped or normalised, on stderr.
pub fn print_read_report(report: &mrrec_datasets::ReadReport) {
    if report.read == 0 && report.skipped.is_empty() {
        return;
    }
    for line in report.summary() {
        eprintln!("{line}");
    }
}
