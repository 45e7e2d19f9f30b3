//! Hostile guest frames through the whole gate (parse, judge, synthesize).
#![no_main]
use cordon::netfilter::gate::{Config, Gate};
use cordon::policy::{parse_rules, Env, Policy};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let rules = parse_rules(&["203.0.113.0/24:80".into(), "*.example.org".into()], &["203.0.113.9".into()]).unwrap();
    let mut g = Gate::new(Config {
        policy: Policy::new(rules, false),
        env: Env { gateways: vec!["10.0.2.2".parse().unwrap()], host_addrs: vec![] },
        dns_addrs: vec!["10.0.2.3".parse().unwrap()],
        gateway_v4: "10.0.2.2".parse().unwrap(),
        mtu: 1500,
        dns_upstream: None,
    });
    let _ = g.outbound(data);
    let _ = g.inbound(data);
});
