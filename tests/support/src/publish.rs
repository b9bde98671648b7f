//! Publishing many messages through JetStream quickly and safely.

use async_nats::jetstream::Context;
use async_nats::HeaderMap;

/// async-nats refuses, or with backpressure waits for, more than 5,000 publishes awaiting their
/// acks; awaiting acks per chunk below that keeps the pipe full without deadlocking on it.
const IN_FLIGHT: usize = 2_000;

/// Publishes `(subject, payload, Nats-Msg-Id)` in order and returns the stream sequence of the
/// last one stored.
pub async fn publish_all<'a>(
    js: &Context,
    messages: impl IntoIterator<Item = (&'a str, &'a [u8], Option<&'a str>)>,
) -> u64 {
    let mut last = 0;
    let mut acks = Vec::with_capacity(IN_FLIGHT);
    for (subject, payload, msg_id) in messages {
        let ack = match msg_id {
            Some(id) => {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", id);
                js.publish_with_headers(subject.to_string(), headers, payload.to_vec().into())
                    .await
            }
            None => {
                js.publish(subject.to_string(), payload.to_vec().into())
                    .await
            }
        };
        acks.push(ack.expect("publish"));
        if acks.len() == IN_FLIGHT {
            for ack in acks.drain(..) {
                last = ack.await.expect("JetStream stores the message").sequence;
            }
        }
    }
    for ack in acks {
        last = ack.await.expect("JetStream stores the message").sequence;
    }
    last
}

/// Publishes `(subject, payload, headers)` in order and returns the stream sequence of the last
/// one stored: for messages that carry more than a `Nats-Msg-Id` (signatures, say).
pub async fn publish_all_with_headers(
    js: &Context,
    messages: impl IntoIterator<Item = (String, Vec<u8>, HeaderMap)>,
) -> u64 {
    let mut last = 0;
    let mut acks = Vec::with_capacity(IN_FLIGHT);
    for (subject, payload, headers) in messages {
        acks.push(
            js.publish_with_headers(subject, headers, payload.into())
                .await
                .expect("publish"),
        );
        if acks.len() == IN_FLIGHT {
            for ack in acks.drain(..) {
                last = ack.await.expect("JetStream stores the message").sequence;
            }
        }
    }
    for ack in acks {
        last = ack.await.expect("JetStream stores the message").sequence;
    }
    last
}
