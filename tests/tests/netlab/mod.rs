//! Test network fixtures for the gate's integration tests: a test host in a
//! network namespace joined to the host by a veth (TEST-NET-2 and
//! 2001:db8:7::/64), a private namespace to run cordon itself in (so that
//! what passt sends, multicast included, never leaves it), servers, and the
//! guest-side probe. Only loopback and these namespaces are ever reached.
#![allow(dead_code)]

use std::net::{IpAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::backends::{text, Backend};
use crate::common::*;

/// Answers every connection accepted on `l` with `reply` and closes it.
pub fn serve_on(l: TcpListener, reply: &'static str) -> u16 {
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

/// A TCP server that answers every connection with `reply` and closes.
pub fn serve(addr: &str, reply: &'static str) -> u16 {
    serve_on(TcpListener::bind(addr).unwrap(), reply)
}

/// Sandbox shell snippet: try ADDR PORT, print "NAME:ok:<data>" or "NAME:refused"/"NAME:fail".
pub fn probe(name: &str, addr: &str, port: u16) -> String {
    format!(
        "out=$(sleep 1 | nc -w 3 {addr} {port} 2>/tmp/err.{name}); \
         if [ -n \"$out\" ]; then echo {name}:ok:$out; \
         elif grep -q refused /tmp/err.{name}; then echo {name}:refused; else echo {name}:fail; fi; "
    )
}

/// `icmp-echo ADDR`: one echo request through an unprivileged ICMP socket
/// (the kernel fills in the id and checksum); exit 0 on a reply within 2 s.
const ICMP_ECHO_C: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    struct sockaddr_in a4 = {0};
    struct sockaddr_in6 a6 = {0};
    int v6 = argc > 1 && strchr(argv[1], ':') != NULL;
    if (argc != 2 || (v6 ? inet_pton(AF_INET6, argv[1], &a6.sin6_addr) : inet_pton(AF_INET, argv[1], &a4.sin_addr)) != 1) {
        fprintf(stderr, "usage: icmp-echo ADDR\n");
        return 2;
    }
    a4.sin_family = AF_INET;
    a6.sin6_family = AF_INET6;
    int s = v6 ? socket(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6) : socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    if (s < 0) {
        printf("icmp socket: %s\n", strerror(errno));
        return 2;
    }
    unsigned char pkt[16] = {v6 ? 128 : 8, 0};
    int n = v6 ? sendto(s, pkt, sizeof pkt, 0, (struct sockaddr *)&a6, sizeof a6)
               : sendto(s, pkt, sizeof pkt, 0, (struct sockaddr *)&a4, sizeof a4);
    if (n < 0) {
        printf("sendto: %s\n", strerror(errno));
        return 2;
    }
    printf("sent\n");
    struct pollfd p = {s, POLLIN, 0};
    if (poll(&p, 1, 2000) == 1 && recv(s, pkt, sizeof pkt, 0) > 0) {
        printf("reply\n");
        return 0;
    }
    return 1;
}
"#;

/// A workspace (mode 0755) holding only `icmp-echo`, built static with gcc
/// (a prerequisite: its absence fails loudly).
pub fn icmp_echo_workspace() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let ws = tempfile::Builder::new().prefix("cordon-icmp-").tempdir().unwrap();
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = ws.path().join("icmp-echo.c");
    std::fs::write(&src, ICMP_ECHO_C).unwrap();
    let out = Command::new("gcc")
        .args(["-static", "-O1", "-Wall", "-o"])
        .arg(ws.path().join("icmp-echo"))
        .arg(&src)
        .output()
        .expect("gcc is needed to build icmp-echo (apt-get install gcc libc6-dev)");
    assert!(out.status.success(), "gcc -static icmp-echo.c: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(&src).unwrap();
    ws
}

pub fn host_v4() -> String {
    cordon::netfilter::host_addresses()
        .into_iter()
        .find(|a| matches!(a, IpAddr::V4(v) if !v.is_loopback()))
        .expect("the host has a non-loopback IPv4 address")
        .to_string()
}

fn sh(c: &str) {
    let st = Command::new("sh").args(["-c", c]).status().unwrap();
    assert!(st.success(), "setup failed: {c}");
}

/// A network namespace with a veth to the host: 198.51.100.2, 2001:db8:7::2
/// and 169.254.77.2 (link-local) inside, servers on 8081 and 8082; the host
/// side has 198.51.100.1, 2001:db8:7::1 and 169.254.77.1. Removed on drop.
pub struct TestHost {
    ns: String,
    veth: String,
    servers: Vec<std::process::Child>,
}

impl TestHost {
    pub fn new() -> TestHost {
        let id = std::process::id() % 100_000;
        let ns = format!("cordon-t{id}");
        let veth = format!("cdt{id}");
        let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        sh(&format!("ip netns add {ns}"));
        sh(&format!("ip link add {veth} type veth peer name {veth}p"));
        sh(&format!("ip link set {veth}p netns {ns}"));
        sh(&format!(
            "ip addr add 198.51.100.1/24 dev {veth} && ip addr add 169.254.77.1/24 dev {veth} \
             && ip -6 addr add 2001:db8:7::1/64 dev {veth} nodad && ip link set {veth} up"
        ));
        sh(&format!(
            "ip netns exec {ns} sh -c 'ip addr add 198.51.100.2/24 dev {veth}p && ip addr add 169.254.77.2/24 dev {veth}p \
             && ip -6 addr add 2001:db8:7::2/64 dev {veth}p nodad && ip link set {veth}p up && ip link set lo up'"
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

/// Serializes the tests that build a TestHost (one name per process).
pub static NETNS: Mutex<()> = Mutex::new(());

/// A network namespace of the test's own to run cordon in, standing in for
/// the host: loopback, and a veth pair (both ends inside) with
/// 198.51.100.9/24 and 2001:db8:7::9/64 on `v0` and the default routes, so
/// that passt has an interface to work with and multicast a route, and
/// nothing it sends can reach a real network. Removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        // Unique within this process too: both backends' cases run at once.
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("cordon-{tag}{}-{seq}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        sh(&format!("ip netns add {name}"));
        let n = Netns { name };
        n.ip("link set lo up");
        n.ip("link add v0 type veth peer name v1");
        n.ip("addr add 198.51.100.9/24 dev v0");
        n.ip("-6 addr add 2001:db8:7::9/64 dev v0 nodad");
        n.ip("link set v0 up");
        n.ip("link set v1 up");
        n.ip("route add default dev v0");
        n.ip("-6 route add default dev v0");
        n
    }

    /// `ip -n NAME ARGS`, which must succeed.
    pub fn ip(&self, args: &str) {
        sh(&format!("ip -n {} {args}", self.name));
    }

    /// Runs `f` on a thread inside the namespace: sockets it opens stay there.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with an open namespace fd.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    pub fn tcp_listener(&self, addr: &'static str) -> TcpListener {
        self.enter(move || TcpListener::bind(addr).unwrap())
    }

    pub fn udp_socket(&self, addr: &'static str) -> UdpSocket {
        self.enter(move || UdpSocket::bind(addr).unwrap())
    }

    /// `cordon run <isolation> ARGS -- sh -c SCRIPT` inside the namespace.
    pub fn run(&self, b: Backend, args: &[&str], script: &str) -> (i32, String, String) {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(cordon_bin()).args(b.run_args(args));
        c.args(["--", "sh", "-c", script]);
        c.env("CORDON_AGENT", static_agent_bin()).stdin(Stdio::null());
        text(&c.output().unwrap())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
