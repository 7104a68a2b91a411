// What must hold for any text the policy writes or a user types (included
// by the fuzz target fuzz/fuzz_targets/protocol.rs and by the corpus replay
// test crates/mrrec-policy/tests/fuzz_corpus.rs): reading a turn never
// panics and returns only well-formed actions; escaped user text can never
// open or close a protocol tag; ids put in a prompt are from a fixed alphabet.

pub fn check_protocol(data: &[u8]) {
    use mrrec_policy::turn::{parse_turn, Action};
    let text = String::from_utf8_lossy(data);
    if let Some(turn) = parse_turn(&text) {
        match turn.action {
            Action::Retrieve(query) => {
                assert!(!query.is_empty() && !query.contains('<'), "{query:?}");
            }
            Action::Answer { profile, .. } => {
                assert!(
                    !profile.is_empty() && profile.trim() == profile,
                    "{profile:?}"
                );
            }
        }
    }
    let limit = data.first().map_or(0, |b| *b as usize);
    let escaped = mrrec_policy::escape::escape_text(&text, limit);
    assert!(
        !escaped.contains(['<', '>']) && !escaped.chars().any(char::is_control),
        "{escaped:?}"
    );
    assert!(escaped.chars().count() <= limit + 1, "{escaped:?}");
    let id = mrrec_policy::escape::safe_id(&text);
    assert!(id.chars().count() <= 48);
    assert!(
        id.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-')),
        "{id:?}"
    );
}
