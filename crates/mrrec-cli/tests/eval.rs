//! `mrrec eval` on a JSON-lines dataset it has never seen (DESIGN §13): a
//! small synthetic world written as items, events and requests files. The
//! report names every baseline row, the untrained pipeline, and one row per
//! published version; bad invocations fail with a message.

use mrrec_datasets::synthetic::{world, WorldSize};
use std::io::Write;

fn mrrec(args: &[&str]) -> std::process::Output {
    mrrec_testkit::isolated_mrrec(env!("CARGO_BIN_EXE_mrrec"))
        .args(["--log", "warn"])
        .args(args)
        .env("MRREC__METRICS__LISTEN", "")
        .output()
        .expect("mrrec runs")
}

fn write_lines<T: serde::Serialize>(path: &std::path::Path, rows: &[T]) {
    let mut file = std::fs::File::create(path).unwrap();
    for row in rows {
        writeln!(file, "{}", serde_json::to_string(row).unwrap()).unwrap();
    }
}

#[test]
fn eval_runs_on_json_lines_it_has_never_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = world(
        3,
        WorldSize {
            items: 150,
            users: 40,
            ratings_per_user: 12,
        },
    );
    let split = mrrec_datasets::split(&dataset);
    let mut requests = Vec::new();
    for u in &split.users {
        for (name, target) in [("valid", &u.valid), ("test", &u.test)] {
            requests.push(serde_json::json!({
                "request_id": format!("{name}-{}", u.user_id),
                "user_id": u.user_id,
                "query": "something I would like",
                "k": 10,
                "ts": target.ts,
                "target_item_id": target.item_id,
                "split": name,
            }));
        }
    }
    let (items, events, reqs) = (
        tmp.path().join("items.jsonl"),
        tmp.path().join("events.jsonl"),
        tmp.path().join("requests.jsonl"),
    );
    write_lines(&items, &dataset.items);
    write_lines(&events, &dataset.events);
    write_lines(&reqs, &requests);
    let out = tmp.path().join("report.json");
    let dir = tmp.path().join("state");
    let plot = tmp.path().join("curve.png");
    let output = mrrec(&[
        "eval",
        "--items",
        items.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--requests",
        reqs.to_str().unwrap(),
        "--rounds",
        "1",
        "--train-users",
        "20",
        "--sft",
        "0",
        "--dir",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["users"], split.users.len());
    let names: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for name in [
        "popularity",
        "genre_popularity",
        "item_knn",
        "bm25_query",
        "bm25_naive_memory",
        "hybrid",
        "pipeline_untrained",
    ] {
        assert!(names.contains(&name), "{name} missing: {names:?}");
        assert!(stdout.contains(&format!("| {name} |")), "{stdout}");
    }
    for row in report["rows"].as_array().unwrap() {
        for key in ["recall@10", "ndcg@10", "recall@100", "ndcg@100"] {
            let v = row[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{row}");
        }
    }
    // The taste structure is there to find: item-kNN beats popularity.
    let ndcg = |name: &str| {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["ndcg@100"]
            .as_f64()
            .unwrap()
    };
    assert!(ndcg("item_knn") > ndcg("popularity"), "{report}");
    // The curve: the untrained version has a validation reward and a test
    // NDCG@10 (whether or not the round published), and it is drawn.
    let curve = report["curve"].as_array().unwrap();
    assert_eq!(curve[0]["version"], 0, "{report}");
    assert!(curve[0]["validation_reward"].as_f64().is_some(), "{report}");
    assert!(curve[0]["test_ndcg@10"].as_f64().is_some(), "{report}");
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 2_000, "{} bytes", png.len());

    // A place nothing can be written is refused before the run.
    let output = mrrec(&[
        "eval",
        "--items",
        items.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--requests",
        reqs.to_str().unwrap(),
        "--plot",
        tmp.path().join("no/such/curve.png").to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Bad invocations fail with a message.
    let output = mrrec(&["eval", "--items", items.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--data-dir"));
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"request_id\":\"r\",\"user_id\":\"u1\",\"ts\":1,\"target_item_id\":\"m1\",\"split\":\"later\"}\n").unwrap();
    let output = mrrec(&[
        "eval",
        "--items",
        items.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--requests",
        bad.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad.jsonl:1"));
}
