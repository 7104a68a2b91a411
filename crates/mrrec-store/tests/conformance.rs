//! One conformance suite, run against both backends: the embedded store on a
//! temporary directory and a real Redis server.

use mrrec_store::{
    escape, Batch, EmbeddedStore, KvStore, OffsetGuard, Range, RedisStore, StoreError,
};
use mrrec_testkit::Redis;
use std::collections::BTreeMap;

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, f)| (k.to_string(), f.to_string()))
        .collect()
}

async fn suite<S: KvStore>(store: &S, ns: &str) {
    let key = format!("{ns}:h");
    let other = format!("{ns}:other");

    // Reads of nothing.
    assert_eq!(
        store.get_fields(&pairs(&[(&key, "a")])).await.unwrap(),
        vec![None]
    );
    assert!(store.get_all(&key).await.unwrap().is_empty());

    // Sets, increments, reads in order.
    let mut batch = Batch::default();
    batch.set(&key, "a", "1");
    batch.set(&key, "b", "two");
    batch.increment(&other, "n", 5);
    batch.increment(&other, "n", -2);
    assert!(store.apply(&batch).await.unwrap());
    let got = store
        .get_fields(&pairs(&[
            (&key, "b"),
            (&key, "missing"),
            (&other, "n"),
            (&key, "a"),
        ]))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![Some("two".into()), None, Some("3".into()), Some("1".into())]
    );
    let all: BTreeMap<String, String> = store.get_all(&key).await.unwrap();
    assert_eq!(
        all,
        BTreeMap::from([("a".into(), "1".into()), ("b".into(), "two".into())])
    );

    // A guard that holds lets the batch through; one that fails applies nothing.
    let mut batch = Batch::default();
    batch.guard(&key, "a", Some("1".into()));
    batch.guard(&key, "absent", None);
    batch.set(&key, "a", "2");
    batch.increment(&other, "n", 10);
    assert!(store.apply(&batch).await.unwrap());
    assert_eq!(
        store
            .get_fields(&pairs(&[(&key, "a"), (&other, "n")]))
            .await
            .unwrap(),
        vec![Some("2".into()), Some("13".into())]
    );
    let mut stale = Batch::default();
    stale.set(&key, "c", "written-before-the-guard?");
    stale.increment(&other, "n", 100);
    stale.guard(&key, "a", Some("1".into()));
    assert!(
        !store.apply(&stale).await.unwrap(),
        "a stale guard is refused"
    );
    let mut exists = Batch::default();
    exists.guard(&key, "a", None);
    exists.set(&key, "c", "x");
    assert!(
        !store.apply(&exists).await.unwrap(),
        "an absent-guard on a present field is refused"
    );
    assert_eq!(
        store
            .get_fields(&pairs(&[(&key, "c"), (&other, "n")]))
            .await
            .unwrap(),
        vec![None, Some("13".into())],
        "a refused batch writes nothing"
    );

    // Deletes.
    let mut batch = Batch::default();
    batch.delete(&key, "b");
    batch.delete(&key, "never-there");
    assert!(store.apply(&batch).await.unwrap());
    assert_eq!(store.get_all(&key).await.unwrap().len(), 1);

    // Escaped ids never collide, and keys are listed by prefix.
    let tricky = ["a:b", "a%3Ab", "{u}", "*", "x y", "é"];
    let mut batch = Batch::default();
    for id in tricky {
        batch.set(format!("{ns}:user:{}", escape(id)), "id", id);
    }
    assert!(store.apply(&batch).await.unwrap());
    let keys = store.keys(&format!("{ns}:user:")).await.unwrap();
    assert_eq!(keys.len(), tricky.len(), "{keys:?}");
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    for id in tricky {
        let stored = store
            .get_fields(&[(format!("{ns}:user:{}", escape(id)), "id".into())])
            .await
            .unwrap();
        assert_eq!(stored, vec![Some(id.to_owned())]);
    }
    assert_eq!(
        store.keys(&format!("{ns}:nothing")).await.unwrap(),
        Vec::<String>::new()
    );

    // Operations on one key keep their order, whatever other keys come between.
    let seq = format!("{ns}:seq");
    let mut batch = Batch::default();
    batch.set(&seq, "n", "1");
    batch.set(&other, "x", "y");
    batch.increment(&seq, "n", 2);
    batch.set(&seq, "gone", "soon");
    batch.delete(&seq, "gone");
    batch.set(&seq, "back", "1");
    batch.delete(&seq, "back");
    batch.set(&seq, "back", "2");
    assert!(store.apply(&batch).await.unwrap());
    assert_eq!(
        store.get_all(&seq).await.unwrap(),
        BTreeMap::from([("back".into(), "2".into()), ("n".into(), "3".into())])
    );

    // Many keys read at once, absent ones empty.
    let many = store
        .get_all_many(&[seq.clone(), format!("{ns}:absent"), key.clone()])
        .await
        .unwrap();
    assert_eq!(many.len(), 3);
    assert_eq!(many[0].len(), 2);
    assert!(many[1].is_empty());
    assert_eq!(many[2], store.get_all(&key).await.unwrap());

    // Large batches go through whole, sets on one key beyond one HSET's worth too.
    let mut batch = Batch::default();
    for i in 0..2_500 {
        batch.set(format!("{ns}:wide"), format!("f{i}"), i.to_string());
    }
    assert!(store.apply(&batch).await.unwrap());
    let wide = store.get_all(&format!("{ns}:wide")).await.unwrap();
    assert_eq!(wide.len(), 2_500);
    assert_eq!(wide["f2499"], "2499");
    let mut batch = Batch::default();
    for i in 0..20_000 {
        batch.increment(format!("{ns}:big:{}", i % 100), format!("f{i}"), 1);
    }
    assert!(store.apply(&batch).await.unwrap());
    assert_eq!(
        store.get_all(&format!("{ns}:big:7")).await.unwrap().len(),
        200
    );
}

/// The offset guard (exactly-once effect) over the backend: what a stage
/// that stores its offsets with its state relies on.
async fn offsets_suite<S: KvStore>(store: &S, ns: &str) {
    let hash = format!("{ns}:offsets");
    let range = |partition, last_offset| Range {
        topic: "mrrec.events",
        partition,
        last_offset,
    };

    // Nothing stored: every record is fresh, and the batch stores its offsets.
    let first = [range(0, 4), range(1, 9)];
    let guard = OffsetGuard::read(store, &hash, &first).await.unwrap();
    assert!(guard.is_fresh("mrrec.events", 0, 0));
    assert_eq!(guard.stored_offset("mrrec.events", 1), None);
    let mut write = Batch::default();
    guard.advance(&mut write);
    assert!(store.apply(&write).await.unwrap());
    assert_eq!(
        OffsetGuard::stored(store, &hash, "mrrec.events", 0)
            .await
            .unwrap(),
        Some(4)
    );

    // A replay of the same batch finds it stored: nothing fresh, nothing to write.
    let replay = OffsetGuard::read(store, &hash, &first).await.unwrap();
    assert!(!replay.is_fresh("mrrec.events", 0, 4));
    assert!(!replay.is_fresh("mrrec.events", 1, 9));
    let mut write = Batch::default();
    replay.advance(&mut write);
    assert!(write.is_empty(), "a replay writes no offset");

    // Two writers read the same offsets; the second to write loses as a
    // whole (its state goes nowhere) and, read again, sees the first's.
    let next = [range(0, 7)];
    let a = OffsetGuard::read(store, &hash, &next).await.unwrap();
    let b = OffsetGuard::read(store, &hash, &next).await.unwrap();
    assert!(a.is_fresh("mrrec.events", 0, 5) && b.is_fresh("mrrec.events", 0, 5));
    let mut write_a = Batch::default();
    a.advance(&mut write_a);
    write_a.set(format!("{ns}:state"), "by", "a");
    assert!(store.apply(&write_a).await.unwrap());
    let mut write_b = Batch::default();
    b.advance(&mut write_b);
    write_b.set(format!("{ns}:state"), "by", "b");
    assert!(
        !store.apply(&write_b).await.unwrap(),
        "the stale guard fails"
    );
    assert_eq!(
        store
            .get_fields(&pairs(&[(&format!("{ns}:state"), "by")]))
            .await
            .unwrap(),
        vec![Some("a".into())]
    );
    let again = OffsetGuard::read(store, &hash, &next).await.unwrap();
    assert!(!again.is_fresh("mrrec.events", 0, 7));

    // The values can come from a read of other fields too.
    let mut fields = OffsetGuard::fields(&hash, &next);
    fields.push((format!("{ns}:state"), "by".into()));
    let values = store.get_fields(&fields).await.unwrap();
    let shared = OffsetGuard::from_values(&hash, &next, &values[..1]).unwrap();
    assert_eq!(shared.stored_offset("mrrec.events", 0), Some(7));

    // A value that is not an offset is corrupt wherever it is read.
    let mut write = Batch::default();
    write.set(&hash, "mrrec.events:3", "seven");
    assert!(store.apply(&write).await.unwrap());
    let broken = [range(3, 1)];
    assert!(matches!(
        OffsetGuard::read(store, &hash, &broken).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        OffsetGuard::stored(store, &hash, "mrrec.events", 3).await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dir = std::env::temp_dir().join(format!("mrrec-store-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir).unwrap();
    suite(&store, "t").await;
    offsets_suite(&store, "t").await;
    drop(store);
    // Reopening sees what was committed.
    let store = EmbeddedStore::open(&dir).unwrap();
    assert_eq!(
        store.get_fields(&pairs(&[("t:other", "n")])).await.unwrap(),
        vec![Some("13".into())]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let redis = Redis::start().unwrap();
    let store = RedisStore::connect(&redis.url(), None).await.unwrap();
    suite(&store, "t").await;
    offsets_suite(&store, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_retryable() {
    let mut redis = Redis::start().unwrap();
    let store = RedisStore::connect(&redis.url(), None).await.unwrap();
    redis.kill();
    let error = store.get_all("k").await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
}

/// Issue 19, point 6: Redis at `maxmemory` refuses writes with OOM; that is
/// an outage to retry (and alert on), not a fatal error that crash-loops
/// the stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_is_retryable() {
    let redis = Redis::start().unwrap();
    let store = RedisStore::connect(&redis.url(), None).await.unwrap();
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut batch = Batch::default();
    batch.set("k".to_owned(), "f".to_owned(), "x".repeat(4096));
    let error = store.apply(&batch).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(error.to_string().contains("OOM"), "{error}");
    // Once Redis has room again, the same write goes through.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(store.apply(&batch).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_password_conforms() {
    let dir = std::env::temp_dir().join(format!("mrrec-redis-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let redis = Redis::start_tls(&dir, "s3cret-pw").unwrap();
    let ca = redis.tls().unwrap().ca_file.clone();
    let store = RedisStore::connect(&redis.url(), Some(&ca)).await.unwrap();
    suite(&store, "t").await;

    // The server's certificate is not trusted without its CA: refused.
    let error = match RedisStore::connect(&redis.url(), None).await {
        Ok(store) => store.get_all("k").await.unwrap_err(),
        Err(e) => e,
    };
    assert!(error.to_string().contains("certificate"), "{error}");
    // A wrong password is refused, and the error does not echo it.
    let wrong = redis.url().replace("s3cret-pw", "guess");
    let error = match RedisStore::connect(&wrong, Some(&ca)).await {
        Ok(store) => store.get_all("k").await.unwrap_err(),
        Err(e) => e,
    };
    let text = error.to_string();
    assert!(text.contains("uthentication"), "{text}");
    assert!(
        !text.contains("guess") && !text.contains("s3cret"),
        "{text}"
    );
    // A CA file with a plain redis:// URL is a configuration mistake.
    let plain = format!("redis://127.0.0.1:{}/0", redis.port());
    assert!(RedisStore::connect(&plain, Some(&ca)).await.is_err());
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
