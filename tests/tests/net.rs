//! The egress gate on each backend (`vm::`: QEMU under TCG, frames from its
//! -netdev stream; `namespace::`: frames from the sandbox's tap) and passt:
//! host services, metadata,
//! CIDR/port rules against test hosts in network namespaces this test
//! creates (veth, TEST-NET-2 (TEST-NET-3 is where this sandbox puts the
//! package registries) and 2001:db8:7::/64), guarded addresses (multicast,
//! link-local, the host's own, also when they appear mid-run), domain rules
//! against the test's own DNS server, the DNS flood bound, and the audit log.

mod common;
#[macro_use]
mod backends;
mod netlab;

use backends::*;
use netlab::*;
use std::net::{IpAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

backend_tests! {
    both: [
        test_net_host_port_rule_and_guarded_addresses,
        test_net_full_still_blocks_metadata_and_gateway,
        test_net_cidr_port_rules_v4_v6_and_embedded_v4,
        test_net_domain_rules_nxdomain_without_upstream_query_and_rebinding,
        test_net_bad_rules_are_rejected_by_name,
        test_net_full_guards_multicast_unless_named_and_dhcp_still_works,
        test_net_full_guards_link_local_unless_named,
        test_net_host_address_in_allow_cidr_stays_blocked_and_cordon_says_so,
        test_net_host_address_added_mid_run_is_guarded,
        test_net_ipv6_works_with_tcp_only_rules_and_icmp_stays_judged,
    ],
}

fn test_net_host_port_rule_and_guarded_addresses(b: Backend) {
    let a = serve("127.0.0.1:0", "from-A");
    let b_port = serve("127.0.0.1:0", "from-B");
    let any = serve("0.0.0.0:0", "from-any");
    let hv4 = host_v4();
    let log = tempfile::NamedTempFile::new().unwrap();
    let script = [
        probe("A", "10.0.2.2", a),
        probe("B", "10.0.2.2", b_port),
        probe("HOSTADDR", &hv4, any),
        probe("META", "169.254.169.254", 80),
        probe("LOOP", "127.0.0.1", a),
    ]
    .concat();
    let (code, out, err) = b.sh(&["--allow", &format!("host:{a}"), "--net-log", log.path().to_str().unwrap()], &script);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("A:ok:from-A"), "allowed host service not reached: {out}");
    assert!(out.contains("B:refused"), "other host port must be refused at once (RST): {out}");
    assert!(out.contains("HOSTADDR:refused"), "host's own address must be refused: {out}");
    assert!(out.contains("META:refused"), "metadata must be refused: {out}");
    assert!(!out.contains("LOOP:ok"), "guest loopback is the guest's own: {out}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(log.path()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let find = |port: u16| lines.iter().find(|l| l["port"] == port && l["dst"] == "10.0.2.2").cloned();
    let la = find(a).expect("audit line for the allowed flow");
    assert_eq!((la["verdict"].as_str(), la["rule"].as_str()), (Some("allow"), Some(format!("host:{a}").as_str())));
    assert!(la["bytes_in"].as_u64().unwrap() > 0);
    assert_eq!(find(b_port).expect("audit line for the denied flow")["verdict"], "deny");
    let summary = lines.last().unwrap();
    assert_eq!(summary["summary"], true);
    assert!(summary["flows_denied"].as_u64().unwrap() >= 3, "{summary}");
}

fn test_net_full_still_blocks_metadata_and_gateway(b: Backend) {
    let a = serve("127.0.0.1:0", "secret-service");
    let script =
        [probe("GW", "10.0.2.2", a), probe("META", "169.254.169.254", 80), probe("ALI", "100.100.100.200", 80)]
            .concat();
    let (code, out, err) = b.sh(&["--net", "full"], &script);
    assert_eq!(code, 0, "{err}");
    for n in ["GW", "META", "ALI"] {
        assert!(out.contains(&format!("{n}:refused")), "{n} reachable with --net full: {out}");
    }
}

fn test_net_cidr_port_rules_v4_v6_and_embedded_v4(b: Backend) {
    let _g = NETNS.lock().unwrap_or_else(|e| e.into_inner());
    let _host = TestHost::new();
    let log = tempfile::NamedTempFile::new().unwrap();
    let script = [
        probe("V4A", "198.51.100.2", 8081),
        probe("V4B", "198.51.100.2", 8082),
        probe("V6A", "2001:db8:7::2", 8081),
        probe("V6B", "2001:db8:7::2", 8082),
    ]
    .concat();
    let (code, out, err) = b.sh(
        &[
            "--allow",
            "198.51.100.2:8081",
            "--allow",
            "[2001:db8:7::/64]:8081",
            "--net-log",
            log.path().to_str().unwrap(),
        ],
        &script,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("V4A:ok:port8081"), "{out}");
    assert!(out.contains("V4B:refused"), "{out}");
    assert!(out.contains("V6A:ok:port8081"), "{out}");
    assert!(out.contains("V6B:refused"), "{out}");

    // Deny a CIDR under --net full; NAT64 and 6to4 forms of the same IPv4
    // host must not get around it, while the plain IPv6 address still works.
    let log2 = tempfile::NamedTempFile::new().unwrap();
    let script = [
        probe("DENY4", "198.51.100.2", 8081),
        probe("NAT64", "64:ff9b::c633:6402", 8081),
        probe("SIXTOFOUR", "2002:c633:6402::1", 8081),
        probe("V6", "2001:db8:7::2", 8081),
    ]
    .concat();
    let (code, out, err) =
        b.sh(&["--net", "full", "--deny", "198.51.100.0/24", "--net-log", log2.path().to_str().unwrap()], &script);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("DENY4:refused"), "{out}");
    assert!(out.contains("NAT64:refused"), "{out}");
    assert!(out.contains("SIXTOFOUR:refused"), "{out}");
    assert!(out.contains("V6:ok:port8081"), "{out}");
    let text = std::fs::read_to_string(log2.path()).unwrap();
    assert!(text.contains("embedded"), "the audit log says why the IPv6 forms were denied: {text}");
}

/// A DNS server on loopback answering A queries from a table, counting queries.
fn dns_server(
    table: Vec<(&'static str, &'static str)>,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let (seen2, count2) = (seen.clone(), count.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Some(q) = cordon::netfilter::dns::parse_query(&buf[..n]) else { continue };
            count2.fetch_add(1, Ordering::SeqCst);
            seen2.lock().unwrap().push(q.name.clone());
            let hit = table.iter().find(|(n, _)| *n == q.name);
            let answers: Vec<(IpAddr, u32)> = match hit {
                Some((_, ip)) if q.qtype == cordon::netfilter::dns::TYPE_A => vec![(ip.parse().unwrap(), 30)],
                _ => vec![],
            };
            let rcode = if hit.is_some() { 0 } else { 3 };
            let _ = sock.send_to(&cordon::netfilter::dns::reply(&q, rcode, &answers), from);
        }
    });
    (addr, seen, count)
}

fn test_net_domain_rules_nxdomain_without_upstream_query_and_rebinding(b: Backend) {
    let _g = NETNS.lock().unwrap_or_else(|e| e.into_inner());
    let _host = TestHost::new();
    let (dns, seen, _count) =
        dns_server(vec![("pkg.allowed.test", "198.51.100.2"), ("rebind.allowed.test", "10.1.2.3")]);
    let log = tempfile::NamedTempFile::new().unwrap();
    let script = "nslookup pkg.allowed.test 10.0.2.3 > /tmp/ok 2>&1; grep -q 198.51.100.2 /tmp/ok && echo RESOLVED; \
                  nslookup secret-data.exfil.test 10.0.2.3 > /tmp/nx 2>&1; grep -qi 'NXDOMAIN\\|can.t find' /tmp/nx && echo NXDOMAIN; \
                  nslookup rebind.allowed.test 10.0.2.3 > /tmp/rb 2>&1; grep -q 10.1.2.3 /tmp/rb && echo REBOUND; ";
    let script = format!("{script}{}{}", probe("NAMED", "198.51.100.2", 8081), probe("NAMEDB", "198.51.100.2", 8082));
    let args = ["--allow", "*.allowed.test:8081", "--net-log", log.path().to_str().unwrap(), "--", "sh", "-c", &script];
    let out = b.run(&args).env("CORDON_DNS_UPSTREAM", dns.to_string()).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("RESOLVED"), "allowed name did not resolve: {stdout}");
    assert!(stdout.contains("NXDOMAIN"), "denied name must get NXDOMAIN: {stdout}");
    assert!(!stdout.contains("REBOUND"), "a private answer for an allowed name must be dropped: {stdout}");
    assert!(stdout.contains("NAMED:ok:port8081"), "resolved address not reachable on the allowed port: {stdout}");
    assert!(stdout.contains("NAMEDB:refused"), "{stdout}");
    let names = seen.lock().unwrap().clone();
    assert!(names.iter().all(|n| !n.contains("exfil")), "a denied name reached the upstream DNS server: {names:?}");
    assert!(names.iter().any(|n| n == "pkg.allowed.test"));
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("secret-data.exfil.test") && text.contains("NXDOMAIN"), "{text}");
    assert!(text.contains("rebinding"), "{text}");
}

fn test_net_bad_rules_are_rejected_by_name(b: Backend) {
    let (code, out, err) = text(&b.output(&["--allow", "10.0.0.0/99", "--", "echo", "ran"]));
    assert_eq!(code, 120, "{err}");
    assert!(err.contains("10.0.0.0/99"), "{err}");
    assert!(!out.contains("ran"), "{out}");
    let (code, out, err) = text(&b.output(&["--net", "none", "--allow", "host:80", "--", "echo", "ran"]));
    assert_eq!(code, 120, "{err}");
    assert!(!out.contains("ran"), "{out}");
    // Positive control: a good rule runs.
    let (code, out, err) = text(&b.output(&["--allow", "10.0.0.0/8", "--", "echo", "ran"]));
    assert_eq!((code, out.as_str()), (0, "ran\n"), "{err}");
}

/// File names of the TFTP read requests queued on `sock` (one datagram
/// each, retransmissions included).
fn tftp_names(sock: &UdpSocket) -> Vec<String> {
    sock.set_nonblocking(true).unwrap();
    let mut names = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok(n) = sock.recv(&mut buf) {
        let name = buf[2..n].split(|b| *b == 0).next().unwrap_or_default();
        names.push(String::from_utf8_lossy(name).into_owned());
    }
    names
}

fn test_net_full_guards_multicast_unless_named_and_dhcp_still_works(b: Backend) {
    // cordon runs in a namespace of its own: a multicast datagram that got
    // past the gate would reach this socket (bound to every address, as a
    // host service would be) and no real network.
    let ns = Netns::new("mc");
    let sink = ns.udp_socket("0.0.0.0:0");
    let port = sink.local_addr().unwrap().port();
    // The guarded datagram first, then a marker through an allowed host port:
    // once the marker is here, the multicast one would be too.
    // DHCP only where a step can run a client (the VM; in namespaces ns-init
    // configures the tap and steps have no packet sockets).
    let dhcp = if b.dhcp_in_step() {
        format!("udhcpc -i {} -n -q -t 3 -T 1 -s /bin/true >/dev/null 2>&1 && echo DHCP:ok; ", b.nic())
    } else {
        String::new()
    };
    let script = format!(
        "timeout 2 tftp -g -l /tmp/a -r MULTI 224.0.0.1 {port} 2>/dev/null; \
         timeout 2 tftp -g -l /tmp/b -r MARK 10.0.2.2 {port} 2>/dev/null; {dhcp}echo done"
    );
    let host_rule = format!("udp/host:{port}");
    let (code, out, err) = ns.run(b, &["--net", "full", "--allow", &host_rule], &script);
    assert_eq!(code, 0, "{err}");
    let names = tftp_names(&sink);
    assert!(names.iter().any(|n| n == "MARK"), "the marker did not arrive: {names:?} {out}");
    assert!(!names.iter().any(|n| n == "MULTI"), "multicast from the sandbox reached a host socket: {names:?}");
    if b.dhcp_in_step() {
        assert!(out.contains("DHCP:ok"), "the guest's DHCP with passt must keep working: {out}");
    }

    // Positive control: the same probe arrives when a rule names the group.
    let group_rule = format!("udp/224.0.0.1:{port}");
    let (code, _out, err) = ns.run(b, &["--net", "full", "--allow", &host_rule, "--allow", &group_rule], &script);
    assert_eq!(code, 0, "{err}");
    let names = tftp_names(&sink);
    assert!(names.iter().any(|n| n == "MULTI"), "an explicitly allowed group must be reachable: {names:?}");
}

fn test_net_full_guards_link_local_unless_named(b: Backend) {
    let _g = NETNS.lock().unwrap_or_else(|e| e.into_inner());
    let _host = TestHost::new();
    let script = [probe("LL", "169.254.77.2", 8081), probe("V4", "198.51.100.2", 8081)].concat();
    let (code, out, err) = b.sh(&["--net", "full"], &script);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("LL:refused"), "link-local reachable with --net full: {out}");
    assert!(out.contains("V4:ok:port8081"), "an ordinary test host must stay reachable: {out}");
    let (code, out, err) = b.sh(&["--net", "full", "--allow", "0.0.0.0/0", "--allow", "169.0.0.0/8"], &script);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("LL:refused"), "a wide CIDR must not open link-local: {out}");
    // Positive control: a rule naming the address opens it.
    let (code, out, err) = b.sh(&["--net", "full", "--allow", "169.254.77.2:8081"], &script);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("LL:ok:port8081"), "{out}");
}

fn test_net_host_address_in_allow_cidr_stays_blocked_and_cordon_says_so(b: Backend) {
    let ns = Netns::new("ha");
    let port = serve_on(ns.tcp_listener("0.0.0.0:0"), "from-host");
    let script = probe("HOST", "198.51.100.9", port);
    let (code, out, err) = ns.run(b, &["--allow", "198.51.100.0/24"], &script);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("HOST:refused"), "a CIDR holding the host's address opened it: {out}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("cordon: ") && l.contains("\"198.51.100.0/24\"") && l.contains("198.51.100.9")),
        "cordon run must say that the host's address stays blocked: {err}"
    );
    // Positive control: the exact address opens it, without the warning.
    let (code, out, err) = ns.run(b, &["--allow", "198.51.100.9"], &script);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("HOST:ok:from-host"), "{out}");
    assert!(!err.contains("stays blocked"), "{err}");
}

/// A loopback server in `ns` that, on its first connection, adds `addr` to
/// the namespace's interface (a new host address mid-run) and says "go".
fn add_address_on_connect(ns: &Netns, addr: &'static str) -> u16 {
    let l = ns.tcp_listener("127.0.0.1:0");
    let port = l.local_addr().unwrap().port();
    let name = ns.name.clone();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let st = std::process::Command::new("ip").args(["-n", &name, "addr", "add", addr, "dev", "v0"]).status();
            assert!(st.unwrap().success(), "ip addr add {addr}");
            use std::io::Write;
            let _ = c.write_all(b"go");
        }
    });
    port
}

fn test_net_host_address_added_mid_run_is_guarded(b: Backend) {
    let ns = Netns::new("hr");
    let port = serve_on(ns.tcp_listener("0.0.0.0:0"), "from-host");
    // The guest waits for the address to exist, then probes it (a few times:
    // the gate learns of it from the kernel, not at the same instant).
    let script = |addr: &str, sync: u16, until: &str| {
        format!(
            "g=$(sleep 1 | nc -w 5 10.0.2.2 {sync}); echo SYNC:$g; \
             for i in 1 2 3 4 5 6 7 8; do r=$({p}); echo \"$r\"; \
             case \"$r\" in {until}) break;; esac; sleep 1; done",
            p = probe("NEW", addr, port).trim_end().trim_end_matches(';')
        )
    };
    let sync = add_address_on_connect(&ns, "198.51.100.77/32");
    let (code, out, err) =
        ns.run(b, &["--net", "full", "--allow", &format!("host:{sync}")], &script("198.51.100.77", sync, "*refused"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SYNC:go"), "{out}");
    assert!(out.contains("NEW:refused"), "an address the host gained mid-run stayed open: {out}");
    // Positive control: the same probe gets through when a rule names the address.
    let sync = add_address_on_connect(&ns, "198.51.100.78/32");
    let (code, out, err) = ns.run(
        b,
        &["--net", "full", "--allow", &format!("host:{sync}"), "--allow", "198.51.100.78"],
        &script("198.51.100.78", sync, "*:ok:*"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SYNC:go") && out.contains("NEW:ok:from-host"), "{out}");
    assert!(!out.contains("NEW:refused"), "{out}");
}

/// Sends length-prefixed frames on `s`.
fn send_frames(s: &mut std::os::unix::net::UnixStream, frames: &[Vec<u8>]) {
    use std::io::Write;
    for f in frames {
        s.write_all(&(f.len() as u32).to_be_bytes()).unwrap();
        s.write_all(f).unwrap();
    }
}

/// Reads one length-prefixed frame from `s`.
fn read_frame(s: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
    use std::io::Read;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut f).unwrap();
    f
}

/// The DNS rcode of a reply frame from the gate.
fn rcode(frame: &[u8]) -> Option<u8> {
    use cordon::netfilter::packet::{parse, Packet, L4};
    let Some(Packet::Ip(ip)) = parse(frame) else { return None };
    let L4::Udp { sport: 53, payload, .. } = ip.l4 else { return None };
    frame.get(payload).and_then(|p| p.get(3)).map(|b| b & 0x0f)
}

/// The gate's relay without QEMU or passt: the test writes the guest's
/// frames itself. A flood of questions for allowed names must not become a
/// flood upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_net_dns_flood_is_bounded_upstream() {
    use cordon::netfilter::{dns, gate, packet::UdpPeer, relay::Relay};
    // An upstream that counts the names it is asked and never answers.
    let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let asked2 = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok(n) = upstream.recv(&mut buf) {
            if let Some(q) = dns::parse_query(&buf[..n]) {
                asked2.lock().unwrap().insert(q.name);
            }
        }
    });
    let rules = cordon::policy::parse_rules(&["*.flood.test".to_string()], &[]).unwrap();
    let g = gate::Gate::new(gate::Config {
        policy: cordon::policy::Policy::new(rules, false),
        env: cordon::policy::Env { gateways: vec!["10.0.2.2".parse().unwrap()], host_addrs: vec![] },
        dns_addrs: vec!["10.0.2.3".parse().unwrap()],
        gateway_v4: "10.0.2.2".parse().unwrap(),
        mtu: 1500,
        dns_upstream: Some(up_addr),
    });
    let (guest_ours, guest_theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let (passt_ours, passt_theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let tok = |s: std::os::unix::net::UnixStream| {
        s.set_nonblocking(true).unwrap();
        tokio::net::UnixStream::from_std(s).unwrap()
    };
    let relay = Relay::start_with(g, tok(guest_theirs), tok(passt_theirs), None, Vec::new).unwrap();
    let query = |name: &str| {
        UdpPeer {
            mac: [2; 6],
            our_mac: [4; 6],
            addr: "10.0.2.3".parse().unwrap(),
            port: 53,
            our_addr: "10.0.2.15".parse().unwrap(),
            our_port: 40000,
        }
        .reply(&dns::build_query(1, name, dns::TYPE_A))
    };
    let flood: Vec<Vec<u8>> = (0..500).map(|i| query(&format!("n{i}.flood.test"))).collect();
    let mut guest = guest_ours;
    let done = tokio::task::spawn_blocking(move || {
        send_frames(&mut guest, &flood);
        // A denied name is answered by the gate itself, in order: once its
        // NXDOMAIN is back, the whole flood has been judged.
        send_frames(&mut guest, &[query("denied.example.org")]);
        guest.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        while rcode(&read_frame(&mut guest)) != Some(3) {}
        guest
    });
    let mut guest = done.await.unwrap();
    let wait_for = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while asked.lock().unwrap().len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        asked.lock().unwrap().len()
    };
    assert_eq!(wait_for(gate::MAX_DNS_IN_FLIGHT), gate::MAX_DNS_IN_FLIGHT);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(asked.lock().unwrap().len(), gate::MAX_DNS_IN_FLIGHT, "more questions upstream than the bound");
    let c = relay.counters();
    assert_eq!(c.dns_dropped, 500 - gate::MAX_DNS_IN_FLIGHT as u64, "{c:?}");
    // Positive control: once the pending questions time out (SERVFAIL to the
    // guest), a new one goes upstream again.
    guest.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut servfail = 0;
    while servfail < gate::MAX_DNS_IN_FLIGHT {
        if rcode(&read_frame(&mut guest)) == Some(2) {
            servfail += 1;
        }
    }
    send_frames(&mut guest, &[query("after.flood.test")]);
    assert_eq!(wait_for(gate::MAX_DNS_IN_FLIGHT + 1), gate::MAX_DNS_IN_FLIGHT + 1);
    assert!(asked.lock().unwrap().contains("after.flood.test"));
    drop((relay, passt_ours));
}

/// ICMP verdicts the gate logged for `dst`.
fn icmp_verdicts(log: &std::path::Path, dst: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["proto"] == "icmp" && l["dst"] == dst)
        .map(|l| l["verdict"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A shell command that sends one ICMP echo to `addr` and succeeds on a
/// reply. The VM's root uses busybox ping (a raw socket); a namespace
/// sandbox's steps have no raw sockets (seccomp, and no CAP_NET_RAW over
/// their network namespace) and busybox ping has no unprivileged fallback,
/// so they use an ICMP datagram socket (`net.ipv4.ping_group_range`) through
/// the static probe in the workspace (`icmp_echo_workspace`).
fn echo(b: Backend, addr: &str) -> String {
    match b {
        Backend::Vm if addr.contains(':') => format!("ping -6 -c 1 -W 2 {addr}"),
        Backend::Vm => format!("ping -c 1 -W 2 {addr}"),
        Backend::Namespace => format!("/workspace/icmp-echo {addr}"),
    }
}

fn test_net_ipv6_works_with_tcp_only_rules_and_icmp_stays_judged(b: Backend) {
    let _g = NETNS.lock().unwrap_or_else(|e| e.into_inner());
    let _host = TestHost::new();
    let ws = icmp_echo_workspace();
    let ws_arg = ws.path().to_str().unwrap();
    // No rule allows ICMP: echo requests are refused by the gate, yet the
    // sandbox's neighbor discovery with passt must still work for IPv6.
    let script = format!(
        "{}{}r=$({} 2>&1) && echo PING4:ok; echo \"echo4: $r\"; \
         r=$({} 2>&1) && echo PING6:ok; echo \"echo6: $r\"; echo done",
        probe("V6", "2001:db8:7::2", 8081),
        probe("V4", "198.51.100.2", 8081),
        echo(b, "198.51.100.2"),
        echo(b, "2001:db8:7::2"),
    );
    let log = tempfile::NamedTempFile::new().unwrap();
    let log_arg = log.path().to_str().unwrap();
    let rules = ["--allow", "tcp/[2001:db8:7::2]:8081", "--allow", "tcp/198.51.100.2:8081"];
    let (code, out, err) = b.sh(&[&rules[..], &["--workspace", ws_arg, "--net-log", log_arg]].concat(), &script);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("V6:ok:port8081"), "IPv6 through a tcp-only rule: {out}");
    assert!(out.contains("V4:ok:port8081"), "{out}");
    assert!(!out.contains("PING4:ok") && !out.contains("PING6:ok"), "ICMP without a rule: {out}");
    for dst in ["198.51.100.2", "2001:db8:7::2"] {
        let v = icmp_verdicts(log.path(), dst);
        assert!(
            !v.is_empty() && v.iter().all(|v| v == "deny"),
            "echo to {dst} must reach the gate and be refused there: {v:?}\n{out}"
        );
    }
    // Positive control: with a rule that allows ICMP the gate passes the same
    // pings (whether the host then may send them is the host's ping_group_range).
    let log = tempfile::NamedTempFile::new().unwrap();
    let log_arg = log.path().to_str().unwrap();
    let rules = ["--allow", "icmp/198.51.100.2", "--allow", "icmp/[2001:db8:7::2]"];
    let (code, out, err) = b.sh(&[&rules[..], &["--workspace", ws_arg, "--net-log", log_arg]].concat(), &script);
    assert_eq!(code, 0, "{err}");
    for dst in ["198.51.100.2", "2001:db8:7::2"] {
        let v = icmp_verdicts(log.path(), dst);
        assert!(v.iter().any(|v| v == "allow"), "echo to {dst} with an icmp rule: {v:?}\n{out}");
    }
}
