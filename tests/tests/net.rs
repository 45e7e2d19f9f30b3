//! The egress gate with real QEMU (tcg) and passt: host services, metadata,
//! CIDR/port rules against test hosts in a network namespace this test
//! creates (veth, TEST-NET-2 (TEST-NET-3 is where this sandbox puts the package registries) and 2001:db8::/32 addresses), domain rules
//! against the test's own DNS server, and the audit log.

mod common;

use common::*;
use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn cordon() -> Command {
    let mut c = Command::new(cordon_bin());
    c.env("CORDON_AGENT", static_agent_bin()).stdin(Stdio::null());
    c
}

fn run_vm(args: &[&str], script: &str) -> (i32, String, String) {
    let mut full = vec!["run", "--accel", "tcg"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--", "sh", "-c", script]);
    let out = cordon().args(full).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A TCP server that answers every connection with `reply` and closes.
fn serve(addr: &str, reply: &'static str) -> u16 {
    let l = std::net::TcpListener::bind(addr).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            use std::io::Write;
            let _ = c.write_all(reply.as_bytes());
        }
    });
    port
}

/// Guest shell snippet: try ADDR PORT, print "NAME:ok:<data>" or "NAME:refused"/"NAME:fail".
fn probe(name: &str, addr: &str, port: u16) -> String {
    format!(
        "out=$(sleep 1 | nc -w 3 {addr} {port} 2>/tmp/err.{name}); \
         if [ -n \"$out\" ]; then echo {name}:ok:$out; \
         elif grep -q refused /tmp/err.{name}; then echo {name}:refused; else echo {name}:fail; fi; "
    )
}

fn host_v4() -> String {
    cordon::netfilter::host_addresses()
        .into_iter()
        .find(|a| matches!(a, IpAddr::V4(v) if !v.is_loopback()))
        .expect("the host has a non-loopback IPv4 address")
        .to_string()
}

#[test]
fn test_net_host_port_rule_and_guarded_addresses() {
    let a = serve("127.0.0.1:0", "from-A");
    let b = serve("127.0.0.1:0", "from-B");
    let any = serve("0.0.0.0:0", "from-any");
    let hv4 = host_v4();
    let log = tempfile::NamedTempFile::new().unwrap();
    let script = [
        probe("A", "10.0.2.2", a),
        probe("B", "10.0.2.2", b),
        probe("HOSTADDR", &hv4, any),
        probe("META", "169.254.169.254", 80),
        probe("LOOP", "127.0.0.1", a),
    ]
    .concat();
    let (code, out, err) =
        run_vm(&["--allow", &format!("host:{a}"), "--net-log", log.path().to_str().unwrap()], &script);
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
    assert_eq!(find(b).expect("audit line for the denied flow")["verdict"], "deny");
    let summary = lines.last().unwrap();
    assert_eq!(summary["summary"], true);
    assert!(summary["flows_denied"].as_u64().unwrap() >= 3, "{summary}");
}

#[test]
fn test_net_full_still_blocks_metadata_and_gateway() {
    let a = serve("127.0.0.1:0", "secret-service");
    let script =
        [probe("GW", "10.0.2.2", a), probe("META", "169.254.169.254", 80), probe("ALI", "100.100.100.200", 80)]
            .concat();
    let (code, out, err) = run_vm(&["--net", "full"], &script);
    assert_eq!(code, 0, "{err}");
    for n in ["GW", "META", "ALI"] {
        assert!(out.contains(&format!("{n}:refused")), "{n} reachable with --net full: {out}");
    }
}

/// A network namespace with a veth to the host: 198.51.100.2 and
/// 2001:db8:7::2 inside, servers on 8081 and 8082. Removed on drop.
struct TestHost {
    ns: String,
    veth: String,
    servers: Vec<std::process::Child>,
}

impl TestHost {
    fn new() -> TestHost {
        let id = std::process::id() % 100_000;
        let ns = format!("cordon-t{id}");
        let veth = format!("cdt{id}");
        let sh = |c: &str| {
            let st = Command::new("sh").args(["-c", c]).status().unwrap();
            assert!(st.success(), "setup failed: {c}");
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        sh(&format!("ip netns add {ns}"));
        sh(&format!("ip link add {veth} type veth peer name {veth}p"));
        sh(&format!("ip link set {veth}p netns {ns}"));
        sh(&format!("ip addr add 198.51.100.1/24 dev {veth} && ip -6 addr add 2001:db8:7::1/64 dev {veth} nodad && ip link set {veth} up"));
        sh(&format!(
            "ip netns exec {ns} sh -c 'ip addr add 198.51.100.2/24 dev {veth}p && ip -6 addr add 2001:db8:7::2/64 dev {veth}p nodad \
             && ip link set {veth}p up && ip link set lo up'"
        ));
        let mut servers = Vec::new();
        for port in [8081, 8082] {
            let code = format!(
                "import socket\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
                 s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('::', {port}))\ns.listen(16)\n\
                 while True:\n    c,_=s.accept()\n    c.sendall(b'port{port}')\n    c.close()\n"
            );
            servers.push(Command::new("ip").args(["netns", "exec", &ns, "python3", "-c", &code]).spawn().unwrap());
        }
        // Wait until both answer from the host side.
        for port in [8081, 8082] {
            let ok = (0..100).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                std::net::TcpStream::connect(("198.51.100.2", port)).is_ok()
            });
            assert!(ok, "test host server {port} did not come up");
        }
        TestHost { ns, veth, servers }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip").args(["link", "del", &self.veth]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

static NETNS: Mutex<()> = Mutex::new(());

#[test]
fn test_net_cidr_port_rules_v4_v6_and_embedded_v4() {
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
    let (code, out, err) = run_vm(
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
        run_vm(&["--net", "full", "--deny", "198.51.100.0/24", "--net-log", log2.path().to_str().unwrap()], &script);
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

#[test]
fn test_net_domain_rules_nxdomain_without_upstream_query_and_rebinding() {
    let _g = NETNS.lock().unwrap_or_else(|e| e.into_inner());
    let _host = TestHost::new();
    let (dns, seen, _count) =
        dns_server(vec![("pkg.allowed.test", "198.51.100.2"), ("rebind.allowed.test", "10.1.2.3")]);
    let log = tempfile::NamedTempFile::new().unwrap();
    let script = "nslookup pkg.allowed.test 10.0.2.3 > /tmp/ok 2>&1; grep -q 198.51.100.2 /tmp/ok && echo RESOLVED; \
                  nslookup secret-data.exfil.test 10.0.2.3 > /tmp/nx 2>&1; grep -qi 'NXDOMAIN\\|can.t find' /tmp/nx && echo NXDOMAIN; \
                  nslookup rebind.allowed.test 10.0.2.3 > /tmp/rb 2>&1; grep -q 10.1.2.3 /tmp/rb && echo REBOUND; ";
    let script = format!("{script}{}{}", probe("NAMED", "198.51.100.2", 8081), probe("NAMEDB", "198.51.100.2", 8082));
    let mut full =
        vec!["run", "--accel", "tcg", "--allow", "*.allowed.test:8081", "--net-log", log.path().to_str().unwrap()];
    full.extend_from_slice(&["--", "sh", "-c", &script]);
    let out = cordon().env("CORDON_DNS_UPSTREAM", dns.to_string()).args(full).output().unwrap();
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

#[test]
fn test_net_bad_rules_are_rejected_by_name() {
    let out = cordon().args(["run", "--accel", "tcg", "--allow", "10.0.0.0/99", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("10.0.0.0/99"), "{err}");
    let out =
        cordon().args(["run", "--accel", "tcg", "--net", "none", "--allow", "host:80", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(120));
}
