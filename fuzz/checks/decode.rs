// What must hold for any bytes a topic may carry (included by the fuzz
// target fuzz/fuzz_targets/decode.rs and by the corpus replay test
// crates/mrrec-messages/tests/fuzz_corpus.rs): decoding never panics, and
// whatever decodes re-encodes to something that decodes to the same message.

fn round_trips<M>(data: &[u8])
where
    M: mrrec_messages::Message + PartialEq + std::fmt::Debug,
{
    if let Ok(message) = mrrec_messages::decode::<M>(data) {
        let bytes = mrrec_messages::encode(&message).expect("a decoded message encodes");
        let again = mrrec_messages::decode::<M>(&bytes).expect("an encoded message decodes");
        assert_eq!(message, again, "round trip changed the message");
    }
}

pub fn check_decode(data: &[u8]) {
    round_trips::<mrrec_messages::Event>(data);
    round_trips::<mrrec_messages::Item>(data);
    round_trips::<mrrec_messages::Request>(data);
    round_trips::<mrrec_messages::Outcome>(data);
    round_trips::<mrrec_messages::Response>(data);
    round_trips::<mrrec_messages::Trajectory>(data);
    round_trips::<mrrec_messages::Reward>(data);
    round_trips::<mrrec_messages::DeadLetter>(data);
    round_trips::<mrrec_messages::PolicyAnnouncement>(data);
    // A record's key must agree with its message, whatever the key is.
    let (key, payload) = data.split_at(data.len().min(8));
    let _ = mrrec_messages::decode_record::<mrrec_messages::Event>(Some(key), payload);
}
