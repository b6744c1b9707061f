//! Real sockets and a real child process: bundles written on one end arrive whole at the other,
//! listeners re-accept after a peer is lost, and bad URLs and bad bytes give typed errors.

use qbkit_link::{BundleReader, Connector, LinkError, LinkUrl, write_bundle};
use shared_frame::{BundleWriter, CHANNEL_NET, DEFAULT_MAX_BUNDLE};
use tokio::io::AsyncWriteExt;

fn bundle(packets: &[&[u8]]) -> Vec<u8> {
    let mut buf = vec![0; DEFAULT_MAX_BUNDLE];
    let mut w = BundleWriter::new(&mut buf, DEFAULT_MAX_BUNDLE);
    for p in packets {
        w.push_ip(CHANNEL_NET, p).unwrap();
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn ip_payloads(b: &[u8]) -> Vec<Vec<u8>> {
    shared_frame::Bundle::new_checked(b, DEFAULT_MAX_BUNDLE)
        .unwrap()
        .records()
        .map(|r| r.unwrap().payload.to_vec())
        .collect()
}

#[test]
fn only_non_loopback_listeners_are_exposed() {
    for (url, exposed) in [
        ("tcp-listen://127.0.0.1:4747", None),
        ("tcp-listen://[::1]:4747", None),
        ("tcp-listen://0.0.0.0:4747", Some("0.0.0.0:4747")),
        ("tcp-listen://[::]:4747", Some("[::]:4747")),
        ("tcp-listen://192.0.2.7:4747", Some("192.0.2.7:4747")),
        ("tcp://192.0.2.7:4747", None),
        ("unix-listen:///run/q.sock", None),
        ("stdio", None),
    ] {
        let got = LinkUrl::parse(url).unwrap().exposed_listener();
        assert_eq!(got.map(|a| a.to_string()).as_deref(), exposed, "{url}");
    }
}

#[test]
fn parses_every_form_and_rejects_garbage() {
    assert_eq!(
        LinkUrl::parse("tcp://localhost:4747").unwrap(),
        LinkUrl::Tcp("localhost:4747".into())
    );
    assert!(matches!(
        LinkUrl::parse("tcp-listen://127.0.0.1:1").unwrap(),
        LinkUrl::TcpListen(_)
    ));
    assert_eq!(
        LinkUrl::parse("unix:///run/q.sock").unwrap(),
        LinkUrl::Unix("/run/q.sock".into())
    );
    assert!(
        LinkUrl::parse("unix-listen:///run/q.sock")
            .unwrap()
            .is_listener()
    );
    assert_eq!(LinkUrl::parse("stdio").unwrap(), LinkUrl::Stdio);
    assert_eq!(
        LinkUrl::parse("exec:cat").unwrap(),
        LinkUrl::Exec("cat".into())
    );
    for bad in [
        "",
        "tcp://nohost",
        "tcp://:1",
        "tcp://h:99999",
        "tcp-listen://x",
        "unix://rel",
        "exec:",
        "ftp://a:1",
    ] {
        assert!(
            matches!(LinkUrl::parse(bad), Err(LinkError::BadUrl { .. })),
            "{bad}"
        );
    }
    for s in [
        "tcp://h:1",
        "tcp-listen://127.0.0.1:9",
        "unix:///a",
        "unix-listen:///b",
        "stdio",
        "exec:x y",
    ] {
        assert_eq!(LinkUrl::parse(s).unwrap().to_string(), s);
    }
}

#[tokio::test]
async fn tcp_listener_reaccepts_after_peer_loss() {
    let mut server = Connector::new(LinkUrl::parse("tcp-listen://127.0.0.1:0").unwrap());
    server.bind().await.unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..2 {
            let (r, _w) = server.connect().await.unwrap();
            let mut reader = BundleReader::new(r, DEFAULT_MAX_BUNDLE);
            while let Some(b) = reader.next().await.unwrap() {
                got.push(ip_payloads(b));
            }
        }
        got
    });
    for round in 0..2u8 {
        let mut c = Connector::new(LinkUrl::parse(&format!("tcp://{addr}")).unwrap());
        let mut client = c.connect().await.unwrap();
        write_bundle(&mut client.1, &bundle(&[&[0x45, round], &[0x60; 1500]]))
            .await
            .unwrap();
        client.1.shutdown().await.unwrap();
    }
    let got = accept.await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1], vec![vec![0x45, 1], vec![0x60; 1500]]);
}

#[tokio::test]
async fn exec_link_talks_to_a_child_and_bytes_split_anywhere_arrive_whole() {
    // `cat` echoes the stream back: what we write in small pieces comes back as whole bundles.
    let mut c = Connector::new(LinkUrl::parse("exec:cat").unwrap());
    let (r, mut w) = c.connect().await.unwrap();
    let b = bundle(&[&[1; 100], &[2; 9000], &[3]]);
    for chunk in b.chunks(7) {
        w.write_all(chunk).await.unwrap();
        w.flush().await.unwrap();
    }
    let mut reader = BundleReader::new(r, DEFAULT_MAX_BUNDLE);
    let got = reader.next().await.unwrap().unwrap();
    assert_eq!(got, &b[..]);
}

#[tokio::test]
async fn unix_garbage_is_a_framing_error() {
    let dir = std::env::temp_dir().join(format!("qbkit-link-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let mut server = Connector::new(LinkUrl::UnixListen(path.clone()));
    server.bind().await.unwrap();
    let t = tokio::spawn(async move {
        let (r, _w) = server.connect().await.unwrap();
        BundleReader::new(r, DEFAULT_MAX_BUNDLE)
            .next()
            .await
            .map(|o| o.map(<[u8]>::to_vec))
    });
    let mut client = Connector::new(LinkUrl::Unix(path.clone()));
    let (_r, mut w) = client.connect().await.unwrap();
    w.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let res = t.await.unwrap();
    assert!(
        matches!(
            res,
            Err(LinkError::Frame(shared_frame::FrameError::BadMagic(_)))
        ),
        "{res:?}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn non_loopback_tcp_needs_a_key() {
    for (url, needs) in [
        ("tcp-listen://127.0.0.1:4747", false),
        ("tcp-listen://[::1]:4747", false),
        ("tcp-listen://0.0.0.0:4747", true),
        ("tcp-listen://192.0.2.7:4747", true),
        ("tcp://127.0.0.1:4747", false),
        ("tcp://[::1]:4747", false),
        ("tcp://localhost:4747", false),
        ("tcp://192.0.2.7:4747", true),
        ("tcp://board.example:4747", true),
        ("unix-listen:///run/q.sock", false),
        ("exec:true", false),
    ] {
        let u = LinkUrl::parse(url).unwrap();
        assert_eq!(u.requires_key(), needs, "{url}");
        let r = Connector::with_key(u, None);
        assert_eq!(
            matches!(r, Err(LinkError::KeyRequired { .. })),
            needs,
            "{url}"
        );
    }
    let e = Connector::with_key(LinkUrl::parse("tcp-listen://0.0.0.0:1").unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--key") && e.contains("keygen"), "{e}");
}

/// A keyed listener on loopback: a silent peer and a wrong-key peer do not keep the right one
/// out; the right one's bundles arrive; the wrong one's dial fails with an auth error.
#[tokio::test]
async fn keyed_listener_serves_the_right_peer_past_silent_and_wrong_ones() {
    use qbkit_link::auth::{AuthError, LinkKey};
    let key = LinkKey::from_bytes([7; 32]);
    let mut server = Connector::with_key(
        LinkUrl::parse("tcp-listen://127.0.0.1:0").unwrap(),
        Some(key.clone()),
    )
    .unwrap();
    server.bind().await.unwrap();
    let addr = server.local_addr().unwrap();
    let url = LinkUrl::parse(&format!("tcp://{addr}")).unwrap();
    // Silent: connects and never says anything (held open for the whole test).
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = tokio::spawn(async move {
        let s = server.connect().await.unwrap();
        (s, server.describe())
    });
    let mut wrong = Connector::with_key(url.clone(), Some(LinkKey::from_bytes([8; 32]))).unwrap();
    let e = wrong.connect().await.err().unwrap();
    assert!(
        matches!(
            e,
            LinkError::Auth {
                source: AuthError::BadTag,
                ..
            }
        ),
        "{e}"
    );
    let mut right = Connector::with_key(url, Some(key)).unwrap();
    let (_r, mut w) = right.connect().await.unwrap();
    assert!(right.describe().contains("authenticated"));
    let ((r, _w), desc) = accept.await.unwrap();
    assert!(desc.contains("authenticated"), "{desc}");
    write_bundle(&mut w, &bundle(&[b"after auth"]))
        .await
        .unwrap();
    let mut reader = BundleReader::new(r, DEFAULT_MAX_BUNDLE);
    let got = reader.next().await.unwrap().unwrap().to_vec();
    assert_eq!(ip_payloads(&got), vec![b"after auth".to_vec()]);
}

/// The pump on our end of an in-memory stream: it writes what `rx` gives (and gives the buffers
/// back to `pool`) and puts a copy of every bundle it reads on `events`.
fn pump_on<'a>(
    ours: tokio::io::DuplexStream,
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pool: &'a qbkit_link::BufPool,
    events: &'a tokio::sync::mpsc::Sender<Vec<u8>>,
) -> impl Future<Output = Result<(), LinkError>> + 'a {
    let (read, write) = tokio::io::split(ours);
    qbkit_link::pump(
        (Box::pin(read), Box::pin(write)),
        DEFAULT_MAX_BUNDLE,
        rx,
        pool,
        events,
        <[u8]>::to_vec,
    )
}

/// A peer that stops reading blocks the write of a large bundle; when the driver then closes its
/// sender (its session timed out), the pump must end instead of waiting on the write forever.
#[tokio::test]
async fn pump_ends_when_outgoing_closes_during_a_write_the_peer_never_takes() {
    let (ours, _peer) = tokio::io::duplex(1024);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (events, _events_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    tx.send(bundle(&[&[0x45; 16000], &[0x45; 16000]]))
        .await
        .unwrap();
    let pool = qbkit_link::BufPool::default();
    let pump = pump_on(ours, rx, &pool, &events);
    let mut pump = std::pin::pin!(pump);
    // The write is stuck after the first KiB.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), &mut pump)
            .await
            .is_err()
    );
    drop(tx);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), pump).await;
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
}

/// The pump gives every bundle buffer it wrote back to the pool (the event loop builds the next
/// bundle in it instead of allocating one), and received bundles arrive whole.
#[tokio::test]
async fn pump_gives_written_buffers_back_to_the_pool() {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (their_read, mut their_write) = tokio::io::split(theirs);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (events, mut events_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let pool = qbkit_link::BufPool::default();
    let sent = bundle(&[&[0x45; 3000]]);
    let pump = pump_on(ours, rx, &pool, &events);
    let peer = async {
        tx.send(sent.clone()).await.unwrap();
        let mut reader = BundleReader::new(Box::pin(their_read), DEFAULT_MAX_BUNDLE);
        let got = reader.next().await.unwrap().unwrap().to_vec();
        their_write.write_all(&got).await.unwrap();
        let echoed = events_rx.recv().await.unwrap();
        drop(tx);
        (got, echoed)
    };
    let (res, (got, echoed)) = tokio::join!(pump, peer);
    res.unwrap();
    assert_eq!(got, sent);
    assert_eq!(echoed, sent);
    assert_eq!(pool.take(), sent, "the written buffer is back in the pool");
}
