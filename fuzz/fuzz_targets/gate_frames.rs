//! Hostile guest frames through the whole gate (parse, judge, synthesize),
//! several per input so that flows, the DNS cache and the learned names
//! carry state from one frame to the next; upstream answers come from the
//! input too. Outputs must respect the gate's invariants.
#![no_main]
use cordon::netfilter::gate::{Config, Gate, Outbound};
use cordon::policy::{parse_rules, Env, Policy};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let rules = parse_rules(&["203.0.113.0/24:80".into(), "*.example.org".into()], &["203.0.113.9".into()]).unwrap();
    let mut g = Gate::new(Config {
        policy: Policy::new(rules, data.first().is_some_and(|b| b & 1 == 1)),
        env: Env { gateways: vec!["10.0.2.2".parse().unwrap()], host_addrs: vec!["192.0.2.2".parse().unwrap()] },
        dns_addrs: vec!["10.0.2.3".parse().unwrap()],
        gateway_v4: "10.0.2.2".parse().unwrap(),
        mtu: 1500,
        dns_upstream: None,
    });
    // Frames separated by a two-byte length.
    let mut rest = data.get(1..).unwrap_or_default();
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let frame = &rest[2..2 + n];
        rest = &rest[2 + n..];
        match g.outbound(frame) {
            Outbound::ForwardFirst(k) => assert!(k < frame.len()),
            Outbound::Forward => assert!(frame.len() <= 1514),
            Outbound::Resolve(job) => {
                let answers = cordon::netfilter::dns::parse_answers(rest, u16::from_be_bytes([0, 0]));
                let _ = g.dns_answer(&job, answers);
            }
            Outbound::Reply(_) | Outbound::Drop => {}
        }
        let _ = g.inbound(frame);
    }
    g.expire(std::time::Instant::now());
    g.close_all();
});
