//! Hostile input on the control channel: the agent answers with errors or
//! closes the connection, and never panics, hangs or allocates without bound.

mod common;

use common::*;
use cordon_protocol::frame::{encode, HEADER_LEN};
use cordon_protocol::{ErrorCode, Frame, FrameReader, Hello, Kind, Message, VERSION_MAX, VERSION_MIN};
use std::io::{Read, Write};
use std::time::Duration;

fn hello(token: &str) -> Vec<u8> {
    let h =
        Hello { version_min: VERSION_MIN, version_max: VERSION_MAX, runner_version: "t".into(), token: token.into() };
    encode(&Frame::new(0, Kind::CONTROL, 0, Message::Hello(h).to_bytes())).unwrap()
}

/// Reads frames until `want` matches or the agent closes; returns the messages.
fn read_messages(sock: &mut std::os::unix::net::UnixStream, max: usize) -> Vec<Message> {
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    while out.len() < max {
        match sock.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
        let mut r = FrameReader::new(&buf[..]);
        let mut msgs = Vec::new();
        let mut used = 0;
        while let Ok(Some(f)) = rt.block_on(r.read_frame()) {
            used += HEADER_LEN + f.body.len();
            if f.kind == Kind::CONTROL {
                msgs.push(Message::from_bytes(&f.body).unwrap());
            }
        }
        buf.drain(..used);
        out.extend(msgs);
    }
    out
}

fn assert_clean_exit(child: &mut std::process::Child) {
    for _ in 0..200 {
        if let Some(st) = child.try_wait().unwrap() {
            assert_eq!(st.code(), Some(0), "agent died badly: {st:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("agent hung after hostile input");
}

#[test]
fn test_hostile_bad_token_refused() {
    let (mut s, mut child) = spawn_raw_agent("right");
    s.write_all(&hello("wrong")).unwrap();
    let msgs = read_messages(&mut s, 2);
    assert!(matches!(msgs[0], Message::Ready(_)));
    assert!(matches!(msgs[1], Message::Error { code: ErrorCode::BadToken, .. }), "{msgs:?}");
    drop(s);
    assert_clean_exit(&mut child);
}

#[test]
fn test_hostile_no_common_version_refused() {
    let (mut s, mut child) = spawn_raw_agent("t");
    let h = Hello { version_min: 90, version_max: 99, runner_version: "t".into(), token: "t".into() };
    s.write_all(&encode(&Frame::new(0, Kind::CONTROL, 0, Message::Hello(h).to_bytes())).unwrap()).unwrap();
    let msgs = read_messages(&mut s, 2);
    assert!(matches!(msgs[1], Message::Error { code: ErrorCode::NoCommonVersion, .. }), "{msgs:?}");
    drop(s);
    assert_clean_exit(&mut child);
}

#[test]
fn test_hostile_unknown_kind_and_bad_json_get_error_replies() {
    let (mut s, mut child) = spawn_raw_agent("t");
    s.write_all(&hello("t")).unwrap();
    let msgs = read_messages(&mut s, 2);
    assert!(matches!(msgs[1], Message::Welcome { .. }), "{msgs:?}");
    let mut bad = Vec::new();
    bad.extend(encode(&Frame::new(5, Kind(99), 0, &b"??"[..])).unwrap());
    bad.extend(encode(&Frame::new(6, Kind::CONTROL, 0, &br#"{"type":"teleport"}"#[..])).unwrap());
    bad.extend(encode(&Frame::new(7, Kind::CONTROL, 0, &b"\xff\xfe"[..])).unwrap());
    bad.extend(encode(&Frame::new(8, Kind::STDIN, 0, &b"to nobody"[..])).unwrap());
    bad.extend(
        encode(&Frame::new(
            0,
            Kind::CONTROL,
            0,
            Message::Credit { channel: cordon_protocol::Channel::Stdout, bytes: u32::MAX }.to_bytes(),
        ))
        .unwrap(),
    );
    bad.extend(encode(&Frame::new(9, Kind::CONTROL, 0, Message::Exit(Default::default()).to_bytes())).unwrap());
    s.write_all(&bad).unwrap();
    let msgs = read_messages(&mut s, 5);
    let codes: Vec<_> = msgs
        .iter()
        .map(|m| match m {
            Message::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            Some(ErrorCode::UnknownKind),
            Some(ErrorCode::BadMessage),
            Some(ErrorCode::BadMessage),
            Some(ErrorCode::Unexpected),
            Some(ErrorCode::Unexpected),
        ],
        "{msgs:?}"
    );
    // The connection still works after all that.
    let exec = Message::Exec(cordon_protocol::Exec { argv: vec!["true".into()], ..Default::default() });
    s.write_all(&encode(&Frame::new(10, Kind::CONTROL, 0, exec.to_bytes())).unwrap()).unwrap();
    let msgs = read_messages(&mut s, 3);
    assert!(msgs.iter().any(|m| matches!(m, Message::Exit(st) if st.code == Some(0))), "{msgs:?}");
    drop(s);
    assert_clean_exit(&mut child);
}

#[test]
fn test_hostile_oversize_length_closes_without_allocating() {
    let (mut s, mut child) = spawn_raw_agent("t");
    s.write_all(&hello("t")).unwrap();
    let _ = read_messages(&mut s, 2);
    let mut f = Vec::new();
    f.extend_from_slice(&u32::MAX.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 1, 0]);
    s.write_all(&f).unwrap();
    let msgs = read_messages(&mut s, 1);
    assert!(matches!(msgs.first(), Some(Message::Error { code: ErrorCode::BadMessage, .. })), "{msgs:?}");
    assert_clean_exit(&mut child);
}

#[test]
fn test_hostile_truncated_frame_then_close() {
    let (mut s, mut child) = spawn_raw_agent("t");
    s.write_all(&hello("t")).unwrap();
    let _ = read_messages(&mut s, 2);
    let full = encode(&Frame::new(3, Kind::CONTROL, 0, &b"{\"type\":\"shutdown\"}"[..])).unwrap();
    s.write_all(&full[..full.len() - 4]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_clean_exit(&mut child);
}

#[test]
fn test_hostile_random_bytes_never_crash_the_agent() {
    let mut x: u64 = 0x2545F4914F6CDD1D;
    for round in 0..40 {
        let (mut s, mut child) = spawn_raw_agent("t");
        if round % 2 == 0 {
            s.write_all(&hello("t")).unwrap();
        }
        let mut junk = vec![0u8; 64 + round * 97];
        for b in junk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        if round % 3 == 0 {
            // Plausible small lengths so bodies reach the message decoder.
            junk[0..3].copy_from_slice(&[0, 0, 0]);
        }
        let _ = s.write_all(&junk);
        drop(s);
        assert_clean_exit(&mut child);
    }
}
