//! DNS queries from the guest and answers from upstream.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(q) = cordon::netfilter::dns::parse_query(data) {
        let _ = cordon::netfilter::dns::reply(&q, 3, &[]);
    }
    let _ = cordon::netfilter::dns::parse_answers(data, u16::from_be_bytes([data.first().copied().unwrap_or(0), data.get(1).copied().unwrap_or(0)]));
});
