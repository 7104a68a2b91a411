//! Replays every input the `protocol` fuzz target has kept
//! (fuzz/corpus/protocol, grown by scripts/fuzz.sh on nightly) through the
//! same check, on stable.

include!("../../../fuzz/checks/protocol.rs");

#[test]
fn every_kept_fuzz_input_parses_and_escapes_safely() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/protocol");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check_protocol(&data));
        assert!(
            outcome.is_ok(),
            "{} fails the protocol check",
            path.display()
        );
        inputs += 1;
    }
    assert!(
        inputs >= 10,
        "the corpus in {} has {inputs} inputs",
        dir.display()
    );
}
