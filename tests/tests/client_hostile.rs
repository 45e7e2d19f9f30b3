//! A hostile agent (a compromised guest) against the runner's AgentClient:
//! it must be cut off with a clear error, never buffered without bound.

use cordon::agent::{AgentClient, AgentError};
use cordon_protocol::{Exec, Frame, FrameReader, FrameWriter, Kind, Message, Ready};
use std::time::Duration;

fn ready() -> Message {
    Message::Ready(Ready {
        agent_version: "evil".into(),
        version_min: 1,
        version_max: 1,
        capabilities: vec![],
        kernel_boot_ms: None,
        agent_start_ms: 0,
    })
}

/// Plays the agent's handshake, then hands over the frame streams.
async fn fake_agent(
) -> (AgentClient, FrameReader<tokio::net::unix::OwnedReadHalf>, FrameWriter<tokio::net::unix::OwnedWriteHalf>) {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let (r, w) = b.into_split();
    let (mut r, mut w) = (FrameReader::new(r), FrameWriter::new(w));
    let agent = tokio::spawn(async move {
        w.write_frame(&Frame::new(0, Kind::CONTROL, 0, ready().to_bytes())).await.unwrap();
        let hello = r.read_frame().await.unwrap().unwrap();
        assert!(matches!(Message::from_bytes(&hello.body).unwrap(), Message::Hello(_)));
        w.write_frame(&Frame::new(0, Kind::CONTROL, 0, Message::Welcome { version: 1 }.to_bytes())).await.unwrap();
        (r, w)
    });
    let client = AgentClient::connect(a, "t", Duration::from_secs(5)).await.unwrap();
    let (r, w) = agent.await.unwrap();
    (client, r, w)
}

#[tokio::test]
async fn test_agent_ignoring_flow_control_is_cut_off() {
    let (client, mut r, mut w) = fake_agent().await;
    let mut h = client.exec(Exec { argv: vec!["x".into()], ..Default::default() }).await.unwrap();
    let exec = r.read_frame().await.unwrap().unwrap();
    let stream = exec.stream;
    w.write_frame(&Frame::new(stream, Kind::CONTROL, 0, Message::Started { pid: 1 }.to_bytes())).await.unwrap();
    h.started().await.unwrap();
    // 8 MiB of stdout without waiting for a single credit (the client stops
    // reading once it cuts the agent off, so the flood runs on its own task).
    tokio::spawn(async move {
        let chunk = vec![b'A'; 64 * 1024];
        for _ in 0..128 {
            if w.write_frame(&Frame::new(stream, Kind::STDOUT, 0, chunk.clone())).await.is_err() {
                break;
            }
        }
    });
    // A consumer that is not reading yet (a slow terminal, say).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = 0usize;
    let err = loop {
        match h.next_event().await {
            Ok(cordon::agent::ExecEvent::Stdout(b)) => got += b.len(),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(&err, AgentError::Lost(Some(why)) if why.contains("flow-control")), "{err}");
    assert!(got <= 4 << 20, "the client buffered {got} bytes past the window");
}

#[tokio::test]
async fn test_agent_flooding_control_messages_is_cut_off() {
    let (client, mut r, mut w) = fake_agent().await;
    let mut h = client.exec(Exec { argv: vec!["x".into()], ..Default::default() }).await.unwrap();
    let stream = r.read_frame().await.unwrap().unwrap().stream;
    tokio::spawn(async move {
        for _ in 0..10_000 {
            let m = Message::Started { pid: 1 }.to_bytes();
            if w.write_frame(&Frame::new(stream, Kind::CONTROL, 0, m)).await.is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut n = 0;
    let err = loop {
        match h.started().await {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(n <= 256, "{n} messages were queued");
    assert!(err.to_string().contains("flooded"), "{err}");
}
