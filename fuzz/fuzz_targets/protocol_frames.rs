//! The control-channel decoder: frames, then control messages.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok((frames, _)) = cordon_protocol::frame::decode_all(data) {
        for f in frames {
            let _ = cordon_protocol::Message::from_bytes(&f.body);
        }
    }
});
