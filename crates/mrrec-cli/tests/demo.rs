//! `mrrec demo` end to end on embedded defaults (no broker, store or model
//! installed: the in-process broker, the embedded store, a policy built on
//! first use), on the seeded synthetic world: recommendations printed with
//! titles that match the request, a training round, the policy switch and
//! the summary table.

use std::process::Output;

fn demo(dir: &std::path::Path) -> Output {
    mrrec_testkit::isolated_mrrec(env!("CARGO_BIN_EXE_mrrec"))
        .args(["--log", "warn", "demo", "--dir"])
        .arg(dir)
        .env("MRREC__METRICS__LISTEN", "")
        .output()
        .expect("mrrec runs")
}

/// `(user, query, categories of the listed items)` for each printed answer.
fn answers(stdout: &str) -> Vec<(String, String, Vec<String>)> {
    let mut user = String::new();
    let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("user ") {
            user = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        } else if let Some(rest) = line.strip_prefix("request: \"") {
            let query = rest.split('"').next().unwrap_or_default().to_lowercase();
            out.push((user.clone(), query, Vec::new()));
        } else if let (Some(last), Some(open)) = (out.last_mut(), line.rfind('[')) {
            if line.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                last.2
                    .push(line[open + 1..].trim_end_matches(']').to_lowercase());
            }
        }
    }
    out
}

#[test]
fn the_demo_runs_the_whole_loop_and_switches_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let output = demo(&tmp.path().join("demo"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for needle in [
        "streamed",
        "recommendations",
        "profile:",
        "policy switch: v0000 → v0001",
        "the same users under v0001",
        "| held-out reward before (v0000) |",
        "| held-out reward after (v0001) |",
        "| requests answered |",
    ] {
        assert!(stdout.contains(needle), "`{needle}` missing:\n{stdout}");
    }
    // Every printed answer lists five titles, and most of them belong to
    // the genre the request names or to one of the user's two favourite
    // genres (the synthetic world's titles speak for their genre, so this is
    // what a reader checks by eye). The policy samples its answers, so not
    // every answer has to.
    let world = mrrec_datasets::synthetic::world(42, Default::default());
    let answers = answers(&stdout);
    assert_eq!(answers.len(), 6, "{stdout}");
    let matching = answers
        .iter()
        .filter(|(user, query, categories)| {
            assert_eq!(categories.len(), 5, "{stdout}");
            let liked: Vec<String> = mrrec_datasets::synthetic::liked_categories(&world, user)
                .into_iter()
                .take(2)
                .map(|c| c.to_lowercase())
                .collect();
            let in_taste = categories
                .iter()
                .filter(|c| {
                    c.split(", ")
                        .any(|g| query.contains(g) || liked.iter().any(|l| l == g))
                })
                .count();
            in_taste >= 3
        })
        .count();
    assert!(
        matching >= 3,
        "{matching} of 6 answers match the request or the user's taste:\n{stdout}"
    );
}
