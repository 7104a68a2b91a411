//! The `mrrec` binary as a user meets it: its command list, `topics create`
//! against a real broker, clear non-zero exits for bad configuration, and
//! the commands docker/compose.yaml runs.

use mrrec_testkit::Tansu;
use std::path::PathBuf;
use std::process::Output;

fn mrrec(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = mrrec_testkit::isolated_mrrec(env!("CARGO_BIN_EXE_mrrec"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("mrrec runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_config(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mrrec-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn help_lists_every_command_of_the_contract() {
    let output = mrrec(&["--help"], &[]);
    assert!(output.status.success());
    let (stdout, _) = text(&output);
    for command in [
        "demo",
        "run",
        "topics",
        "load",
        "memory",
        "recommend",
        "model",
        "llm",
        "train",
        "eval",
        "bench",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(command)),
            "`{command}` missing from --help:\n{stdout}"
        );
    }
}

#[test]
fn topics_create_twice_against_a_real_broker() {
    let tansu = Tansu::start().unwrap();
    let config = write_config(
        "topics.toml",
        &format!(
            "[kafka]\nbrokers = \"{}\"\n[topics]\npartitions = 3\n",
            tansu.bootstrap()
        ),
    );
    let config = config.to_str().unwrap();

    let first = mrrec(&["topics", "create", "--config", config], &[]);
    let (stdout, stderr) = text(&first);
    assert!(first.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("9 created, 0 already existed"), "{stdout}");
    for topic in [
        "mrrec.items",
        "mrrec.events",
        "mrrec.outcomes",
        "mrrec.requests",
        "mrrec.responses",
        "mrrec.trajectories",
        "mrrec.rewards",
        "mrrec.policy",
        "mrrec.dlq",
    ] {
        assert!(stdout.contains(topic), "{topic} missing:\n{stdout}");
    }

    let second = mrrec(&["topics", "create", "--config", config], &[]);
    let (stdout, stderr) = text(&second);
    assert!(second.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("0 created, 9 already existed"), "{stdout}");
}

#[test]
fn bad_configuration_exits_non_zero_naming_every_key() {
    let config = write_config(
        "bad.toml",
        "[kafka]\nbrokerz = \"x\"\n[topics]\npartitions = 0\n[agent]\ngroup_size = 1000\n",
    );
    let output = mrrec(
        &["topics", "create", "--config", config.to_str().unwrap()],
        &[("MRREC__STORE__BACKEND", "mongo")],
    );
    assert!(!output.status.success());
    let (_, stderr) = text(&output);
    for key in [
        "kafka.brokerz",
        "topics.partitions",
        "agent.group_size",
        "store.backend",
    ] {
        assert!(stderr.contains(key), "{key} not named:\n{stderr}");
    }

    let output = mrrec(&["demo", "--config", "/no/such/mrrec.toml"], &[]);
    assert!(!output.status.success());
    assert!(text(&output).1.contains("/no/such/mrrec.toml"));
}

/// docker/compose.yaml cannot run here (no Docker engine): what can be
/// checked is that every `mrrec` command it runs exists and every host
/// file it mounts is in the repository (the configs' contents are checked
/// by mrrec-config's shipped-files test).
#[test]
fn docker_compose_runs_commands_that_exist_and_mounts_files_that_exist() {
    let docker = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docker");
    let compose = std::fs::read_to_string(docker.join("compose.yaml")).unwrap();
    let mut commands = 0;
    for line in compose.lines().map(str::trim) {
        if let Some(array) = line.strip_prefix("command: ") {
            let args: Vec<String> = serde_json::from_str(array)
                .unwrap_or_else(|e| panic!("{line}: not a JSON array: {e}"));
            if args.first().map(String::as_str) != Some("--config") {
                continue; // not mrrec (redis-server)
            }
            assert_eq!(args[1], "/etc/mrrec/compose.toml", "{line}");
            // Everything after the config is the subcommand and its flags:
            // clap must know them all (--help stops before running).
            let mut help: Vec<&str> = args[2..].iter().map(String::as_str).collect();
            help.push("--help");
            let output = mrrec(&help, &[]);
            assert!(
                output.status.success(),
                "{line}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            commands += 1;
        }
        let mount = line.strip_prefix("- ").unwrap_or(line);
        let mount = mount
            .strip_prefix("volumes: [")
            .map_or(mount, |m| m.trim_end_matches(']'));
        if let Some((host, _)) = mount.split_once(':') {
            let host = host
                .strip_prefix("${MRREC_CATALOG:-")
                .map_or(host, |h| h.trim_end_matches('}'));
            if host.starts_with("./") || host.starts_with("../") {
                assert!(docker.join(host).exists(), "{line}: {host} is missing");
            }
        }
    }
    assert!(
        commands >= 7,
        "topics, policy-init, llm and four stages: {commands}"
    );
    for stage in ["distill", "recommend", "reward", "train"] {
        assert!(
            compose.contains(&format!("\"run\", \"--stage\", \"{stage}\"")),
            "{stage} has no service"
        );
    }
}

#[test]
fn bench_train_prints_its_figures_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy");
    let output = mrrec(
        &["bench", "train", "--trajectories", "24"],
        &[("MRREC__POLICY__DIR", policy.display().to_string().as_str())],
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["trajectories"], 24);
    for key in ["seconds_per_update", "tokens_per_s", "peak_rss_mb"] {
        assert!(last[key].as_f64().unwrap() > 0.0, "{key}: {last}");
    }
}

#[test]
fn bench_learn_says_what_it_needs() {
    let output = mrrec(
        &["bench", "learn"],
        &[
            ("MRREC__AGENT__GROUP_SIZE", "4"),
            ("MRREC__AGENT__TEMPERATURE", "1"),
        ],
    );
    assert!(!output.status.success());
    assert!(
        text(&output).1.contains("--data-dir"),
        "{}",
        text(&output).1
    );
    let output = mrrec(&["bench", "learn", "--data-dir", "/nonexistent"], &[]);
    assert!(!output.status.success());
    assert!(
        text(&output).1.contains("agent.group_size"),
        "{}",
        text(&output).1
    );
}

#[test]
fn recommend_without_a_policy_says_how_to_make_one() {
    let tmp = tempfile::tempdir().unwrap();
    let output = mrrec(
        &["recommend", "--user", "1", "--query", "a comedy"],
        &[
            (
                "MRREC__STORE__PATH",
                tmp.path().join("store").display().to_string().as_str(),
            ),
            (
                "MRREC__INDEX__PATH",
                tmp.path().join("index").display().to_string().as_str(),
            ),
            (
                "MRREC__POLICY__DIR",
                tmp.path().join("policy").display().to_string().as_str(),
            ),
            ("MRREC__METRICS__LISTEN", ""),
        ],
    );
    assert!(!output.status.success());
    let (stdout, stderr) = text(&output);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("model init"), "{stderr}");
}

#[test]
fn topics_create_refuses_the_embedded_broker() {
    let output = mrrec(&["topics", "create"], &[]);
    assert!(!output.status.success());
    assert!(text(&output).1.contains("kafka.brokers"));
}

#[test]
fn model_init_if_missing_leaves_an_existing_policy_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("policy/v0000");
    let out = out.to_str().unwrap();
    let output = mrrec(&["model", "init", "--out", out, "--if-missing"], &[]);
    assert!(output.status.success(), "{}", text(&output).1);
    let weights = std::fs::read(tmp.path().join("policy/v0000/model.safetensors")).unwrap();
    // Again: nothing is rebuilt, and the weights stay as they were.
    let output = mrrec(
        &["model", "init", "--out", out, "--if-missing", "--seed", "7"],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output).1);
    assert!(
        text(&output).0.contains("nothing to do"),
        "{}",
        text(&output).0
    );
    assert_eq!(
        std::fs::read(tmp.path().join("policy/v0000/model.safetensors")).unwrap(),
        weights
    );
    // Without the flag an existing directory is refused.
    let output = mrrec(&["model", "init", "--out", out], &[]);
    assert!(!output.status.success());
}
