//! `create_topics` against a real broker: all nine topics, idempotently.

use anyhow::Result;
use mrrec_messages::Topic;
use mrrec_stream::{create_topics, KafkaClients};
use mrrec_testkit::Tansu;
use mrrec_tests::{high_watermarks, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_every_topic_once_and_tolerates_a_second_run() -> Result<()> {
    mrrec_tests::init_tracing();
    let tansu = Tansu::start()?;
    let config = test_config(&tansu.bootstrap(), "tp.", 4);
    let clients = KafkaClients::new(&tansu.bootstrap(), &config.kafka.properties);

    let first = create_topics(&clients, &config.topics).await?;
    assert_eq!(first.len(), 9);
    assert!(first.iter().all(|s| s.created), "{first:?}");
    for status in &first {
        let expected = if status.name == Topic::Policy.name("tp.") {
            1
        } else {
            4
        };
        assert_eq!(status.partitions, expected, "{status:?}");
        assert_eq!(
            high_watermarks(&tansu.bootstrap(), &status.name)?.len(),
            expected
        );
    }

    let second = create_topics(&clients, &config.topics).await?;
    assert_eq!(second.len(), 9);
    assert!(second.iter().all(|s| !s.created), "{second:?}");
    let names: Vec<&str> = second.iter().map(|s| s.name.as_str()).collect();
    let expected: Vec<String> = Topic::ALL.iter().map(|t| t.name("tp.")).collect();
    assert_eq!(names, expected);
    Ok(())
}
