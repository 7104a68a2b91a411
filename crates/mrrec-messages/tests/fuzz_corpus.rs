//! Replays every input the `decode` fuzz target has kept (fuzz/corpus/decode,
//! grown by scripts/fuzz.sh on nightly) through the same check, on stable:
//! an input that once crashed decoding stays fixed.

include!("../../../fuzz/checks/decode.rs");

#[test]
fn every_kept_fuzz_input_decodes_safely() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check_decode(&data));
        assert!(outcome.is_ok(), "{} fails the decode check", path.display());
        inputs += 1;
    }
    assert!(
        inputs >= 10,
        "the corpus in {} has {inputs} inputs",
        dir.display()
    );
}
