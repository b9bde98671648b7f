//! The cost of a signature check: `cargo bench --bench signatures [-- --messages N]`.
//!
//! Signs N heartbeat-sized messages (default 20,000) with 1,000 keys, as a fleet would, and
//! times on one core: `Verifier::check` one message at a time, and `Verifier::check_all` in
//! chunks of several sizes (the reader uses 128), all good and with one forged message per
//! chunk (the batch equation fails and every message of the chunk is checked alone). Prints µs
//! per message; asserts that every way decides the same.

use std::time::Instant;
use truebit_streams::{Signer, SigningKey, Verifier};

fn main() {
    let mut n = 20_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--messages" {
            n = args.next().and_then(|v| v.parse().ok()).expect("a number");
        }
    }
    let keys: Vec<SigningKey> = (0..1000).map(|_| SigningKey::generate()).collect();
    let subject = "truebit.heartbeat";
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| format!(r#"{{"version":"1.0","type":"heartbeat","nodeId":"node-{i:08}","timestamp":"2026-12-07T12:00:00.000Z","data":{{"status":"online","activeTasks":1,"totalTasks":1200}}}}"#).into_bytes())
        .collect();
    let headers: Vec<[(&str, String); 2]> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| keys[i % keys.len()].sign(subject, p))
        .collect();
    let messages: Vec<_> = payloads
        .iter()
        .zip(&headers)
        .map(|(p, h)| {
            (
                subject,
                p.as_slice(),
                Some(h[0].1.as_str()),
                Some(h[1].1.as_str()),
            )
        })
        .collect();

    // Warm the key cache, as a running reader has it: decoding keys is not what is timed.
    let mut v = Verifier::new();
    for m in messages.iter().take(keys.len()) {
        v.check(m.0, m.1, m.2, m.3);
    }
    let started = Instant::now();
    let one: Vec<Signer> = messages
        .iter()
        .map(|m| v.check(m.0, m.1, m.2, m.3))
        .collect();
    let single = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    assert!(one.iter().all(|s| matches!(s, Signer::Verified(_))));
    println!("one at a time          {single:>6.1} µs a message");

    for chunk in [16usize, 64, 128, 256, 512, 1024, 2048] {
        let started = Instant::now();
        let mut all = Vec::with_capacity(n);
        for part in messages.chunks(chunk) {
            all.extend(v.check_all(part));
        }
        let per = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        assert_eq!(all, one, "a batch decides as one at a time");
        println!(
            "in batches of {chunk:<4}     {per:>6.1} µs a message ({:.1}× cheaper)",
            single / per
        );
    }

    // One forged message in every chunk of 128: the batch fails, and each is checked alone.
    let mut forged = messages.clone();
    let other = headers[1][1].1.as_str();
    for i in (0..n).step_by(128) {
        forged[i].3 = Some(other);
    }
    let started = Instant::now();
    let mut all = Vec::with_capacity(n);
    for part in forged.chunks(128) {
        all.extend(v.check_all(part));
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    let bad = all
        .iter()
        .filter(|s| matches!(s, Signer::Forged(_)))
        .count();
    assert_eq!(bad, n.div_ceil(128), "exactly the forged ones are found");
    println!(
        "batches of 128, one forged in each: {per:.1} µs a message (the batch, then each alone)"
    );
}
