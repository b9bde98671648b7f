//! Contract §2 against a real nats-server (Debian's 2.9 in CI, or whatever `NATS_SERVER_BIN` is).

use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::{self, stream::StorageType};
use std::time::Duration;
use truebit_federation::topology::{self, AckMode, TopologyConfig, TopologyError};
use truebit_testkit::NatsServer;

#[tokio::test]
async fn ensure_creates_everything_and_is_idempotent() {
    let server = NatsServer::start();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let cfg = TopologyConfig::default();
    let t = topology::ensure(&js, &cfg).await.unwrap();
    t.stats.put("latest", "{}".into()).await.unwrap();

    let again = topology::ensure(&js, &cfg).await.unwrap();
    let entry = again.stats.get("latest").await.unwrap();
    assert_eq!(
        entry.as_deref(),
        Some(&b"{}"[..]),
        "a second ensure keeps the bucket's contents"
    );

    let mut events = js.get_stream(topology::EVENTS_STREAM).await.unwrap();
    let info = events.info().await.unwrap();
    assert_eq!(info.config.max_message_size, 64 * 1024);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    assert_eq!(info.config.storage, StorageType::File);
    assert!(info
        .config
        .subjects
        .contains(&"truebit.admin.>".to_string()));
    let mut dlq = js.get_stream(topology::DLQ_STREAM).await.unwrap();
    assert_eq!(
        dlq.info().await.unwrap().config.max_age,
        Duration::from_secs(30 * 24 * 3600)
    );
}

#[tokio::test]
async fn changed_settings_are_updated_in_place() {
    let server = NatsServer::start();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    topology::ensure(&js, &TopologyConfig::default())
        .await
        .unwrap();
    js.publish("truebit.heartbeat", "kept".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let week = TopologyConfig {
        events_max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    };
    topology::ensure(&js, &week).await.unwrap();
    let mut events = js.get_stream(topology::EVENTS_STREAM).await.unwrap();
    let info = events.info().await.unwrap();
    assert_eq!(info.config.max_age, week.events_max_age);
    assert_eq!(
        info.state.messages, 1,
        "updating a setting keeps the record"
    );
}

#[tokio::test]
async fn a_setting_jetstream_cannot_change_is_named() {
    let server = NatsServer::start();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut memory = topology::events_stream_config(&TopologyConfig::default());
    memory.storage = StorageType::Memory;
    js.create_stream(memory).await.unwrap();

    let err = topology::ensure(&js, &TopologyConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TopologyError::Immutable {
                setting: "storage",
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("TRUEBIT_EVENTS") && text.contains("storage"),
        "{text}"
    );
}

#[tokio::test]
async fn the_consumer_is_recreated_when_it_ran_ahead_of_the_database() {
    let server = NatsServer::start();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let t = topology::ensure(&js, &TopologyConfig::default())
        .await
        .unwrap();
    for i in 0..5 {
        js.publish("truebit.heartbeat", format!("{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A consumer that has acked everything, over a database that holds only sequence 2.
    let consumer = topology::aggregator_consumer(&t.events, "aggregator", 0, AckMode::Explicit)
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(5).messages().await.unwrap();
    use futures::StreamExt;
    while let Some(m) = batch.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    let consumer = topology::aggregator_consumer(&t.events, "aggregator", 2, AckMode::Explicit)
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    let first = batch.next().await.unwrap().unwrap();
    assert_eq!(
        first.info().unwrap().stream_sequence,
        3,
        "delivery resumes after the database's position"
    );
}

/// An operator who changes ACK_POLICY gets a consumer with the new policy, at the database's
/// position, not an error and not the old one.
#[tokio::test]
async fn a_changed_ack_policy_recreates_the_consumer_where_the_database_is() {
    let server = NatsServer::start();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let t = topology::ensure(&js, &TopologyConfig::default())
        .await
        .unwrap();
    for i in 0..3 {
        js.publish("truebit.heartbeat", format!("{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut explicit = topology::aggregator_consumer(&t.events, "aggregator", 0, AckMode::Explicit)
        .await
        .unwrap();
    assert_eq!(
        explicit.info().await.unwrap().config.ack_policy,
        AckPolicy::Explicit
    );
    let mut all = topology::aggregator_consumer(&t.events, "aggregator", 1, AckMode::All)
        .await
        .unwrap();
    assert_eq!(all.info().await.unwrap().config.ack_policy, AckPolicy::All);
    use futures::StreamExt;
    let mut batch = all.fetch().max_messages(1).messages().await.unwrap();
    let first = batch.next().await.unwrap().unwrap();
    assert_eq!(first.info().unwrap().stream_sequence, 2);
}
