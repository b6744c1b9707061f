//! Drives the whole host side (driver loop + Session + Nat + OS sockets) against real local
//! servers, with an in-process fake board: a smoltcp interface at 10.47.0.2 behind its own
//! board-role Session, exchanging bundles with the driver over in-memory channels shaped like a
//! transport (`LinkEvent`s in, a bounded sender out). Unprivileged: the servers listen on
//! 127.0.0.1, which the NAT reaches with `allow_host_loopback`.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use qbkit_host::driver::{self, DriverConfig};
use qbkit_host::transport::{Framing, LinkEvent, LinkUp};
use qbkit_nat::NatConfig;
use shared_frame::{Role, Session, SessionConfig, SessionEvent};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::sync::mpsc;

#[path = "../examples/stream_board/queue_device.rs"]
mod queue_device;
use queue_device::{MTU, QueueDevice};

/// The fake board: smoltcp + a board Session, speaking bundles to the driver.
struct Board {
    start: std::time::Instant,
    dev: QueueDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    session: Session,
    to_host: mpsc::Sender<LinkEvent>,
    from_host: mpsc::Receiver<Vec<u8>>,
    up: bool,
}

impl Board {
    fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn smol_now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.micros().cast_signed())
    }

    /// One round: deliver bundles from the host, run smoltcp, send what it produced.
    async fn step(&mut self) {
        let wait = tokio::time::sleep(Duration::from_millis(2));
        tokio::select! {
            b = self.from_host.recv() => {
                let b = b.expect("driver alive");
                self.handle(&b);
                while let Ok(b) = self.from_host.try_recv() {
                    self.handle(&b);
                }
            }
            () = wait => {}
        }
        let now = shared_frame::Instant::from_micros(self.micros());
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
        while let Some(ev) = self.session.poll_event() {
            if let SessionEvent::LinkConfig(lc) = ev {
                assert_eq!(lc.ipv4.map(|c| c.addr), Some(Ipv4Addr::new(10, 47, 0, 2)));
                self.up = true;
            }
        }
        let t = self.smol_now();
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        self.send().await;
    }

    fn handle(&mut self, b: &[u8]) {
        let now = shared_frame::Instant::from_micros(self.micros());
        let rx = &mut self.dev.rx;
        self.session
            .handle_bundle(now, b, |_, p| rx.push_back(p.to_vec()))
            .expect("valid bundle from the host");
    }

    async fn send(&mut self) {
        while let Some(buf) = self.dev.next_bundle(&mut self.session) {
            self.to_host
                .send(LinkEvent::Bundle(buf))
                .await
                .expect("driver alive");
        }
    }

    fn tcp(&mut self, dst: SocketAddr, local_port: u16) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0; 256 * 1024]);
        let tx = tcp::SocketBuffer::new(vec![0; 256 * 1024]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        let h = self.sockets.add(s);
        let SocketAddr::V4(dst) = dst else {
            panic!("IPv4 only")
        };
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket<'_>>(h)
            .connect(cx, (IpAddress::Ipv4(*dst.ip()), dst.port()), local_port)
            .expect("connect");
        h
    }
}

fn fake_board(to_host: mpsc::Sender<LinkEvent>, from_host: mpsc::Receiver<Vec<u8>>) -> Board {
    let mut dev = QueueDevice::default();
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ip),
        &mut dev,
        SmolInstant::from_micros(0),
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(10, 47, 0, 2), 24))
            .unwrap();
    });
    iface
        .routes_mut()
        .add_default_ipv4_route(Ipv4Addr::new(10, 47, 0, 1))
        .unwrap();
    let mut cfg = SessionConfig::new(Role::Board, "fake-board");
    cfg.max_mtu = MTU as u32;
    Board {
        start: std::time::Instant::now(),
        dev,
        iface,
        sockets: SocketSet::new(Vec::new()),
        session: Session::new(cfg, shared_frame::Instant::ZERO),
        to_host,
        from_host,
        up: false,
    }
}

/// Echo server on loopback: echoes each connection until EOF, then closes.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Brings the link and the session up between the driver and a new fake board (`setup` runs
/// on the board before the session comes up).
async fn board_up(
    ev_tx: mpsc::Sender<LinkEvent>,
    down_tx: mpsc::Sender<Vec<u8>>,
    down_rx: mpsc::Receiver<Vec<u8>>,
    setup: impl FnOnce(&mut Board),
) -> Board {
    ev_tx
        .send(LinkEvent::Up(LinkUp {
            framing: Framing::Stream,
            tx: down_tx,
            pool: qbkit_link::BufPool::default(),
            description: "in-memory".into(),
        }))
        .await
        .unwrap();
    let mut board = fake_board(ev_tx, down_rx);
    setup(&mut board);
    for _ in 0..2000 {
        if board.up {
            break;
        }
        board.step().await;
    }
    assert!(board.up, "the host's LinkConfig never arrived");
    board
}

fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The ends of an in-memory link to a driver: link events in, bundles out (both ends), and the
/// stop signal.
type LinkEnds = (
    mpsc::Sender<LinkEvent>,
    mpsc::Sender<Vec<u8>>,
    mpsc::Receiver<Vec<u8>>,
    tokio::sync::oneshot::Sender<()>,
);

/// A driver whose NAT has the fake board's MTU and reaches the loopback servers, running until
/// the stop signal.
fn loopback_driver() -> (impl Future<Output = Result<(), driver::Error>>, LinkEnds) {
    let (ev_tx, ev_rx) = mpsc::channel(8);
    let (down_tx, down_rx) = mpsc::channel(2);
    let mut nat = NatConfig::default();
    nat.mtu = MTU;
    nat.allow_host_loopback = true;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drv = driver::run(DriverConfig::new(nat), ev_rx, async {
        let _ = stop_rx.await;
    });
    (drv, (ev_tx, down_tx, down_rx, stop_tx))
}

#[tokio::test(flavor = "current_thread")]
async fn board_tcp_through_the_driver_to_a_real_server() {
    let echo = echo_server();
    let closed = closed_port();
    let (drv, (ev_tx, down_tx, down_rx, stop_tx)) = loopback_driver();

    let board = async move {
        let mut b = board_up(ev_tx, down_tx, down_rx, |_| ()).await;

        // A refused port: the board's connect must fail (RST) without ever establishing.
        let refused = b.tcp(closed, 40001);
        // The echo flow: 1 MiB up, echoed back, then both sides close.
        let h = b.tcp(echo, 40000);
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let (mut sent, mut back) = (0usize, Vec::new());
        let mut refused_done = false;
        for _ in 0..20_000 {
            b.step().await;
            let r = b.sockets.get_mut::<tcp::Socket<'_>>(refused);
            if r.state() == tcp::State::Closed {
                refused_done = true;
            }
            assert_ne!(
                r.state(),
                tcp::State::Established,
                "connect to a closed port succeeded"
            );
            b.echo_step(h, &data, &mut sent, &mut back);
            let s = b.sockets.get::<tcp::Socket<'_>>(h);
            if back.len() == data.len() && !s.may_recv() && refused_done {
                break;
            }
        }
        assert!(refused_done, "the refused connect never failed");
        assert_eq!(back.len(), data.len(), "echo incomplete");
        assert!(back == data, "echo corrupted");
        let s = b.sockets.get::<tcp::Socket<'_>>(h);
        assert!(!s.may_recv(), "the server's FIN did not reach the board");
        let _ = stop_tx.send(());
    };
    let (res, ()) = tokio::join!(drv, board);
    res.unwrap();
}

/// A board whose bundles carry at most 4 KiB (the protocol minimum, while the host offers an MTU
/// of 65520): the host must size its packets to what the board's bundles carry, so a 1 MiB echo
/// completes, and afterwards the idle driver must not spin on a packet it can never send.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn small_board_bundles_echo_then_idle() {
    let echo = echo_server();
    let (drv, (ev_tx, down_tx, down_rx, stop_tx)) = loopback_driver();
    let board = async move {
        let mut b = board_up(ev_tx, down_tx, down_rx, |b| {
            let mut cfg = b.session.config().clone();
            cfg.max_bundle = shared_frame::MIN_MAX_BUNDLE;
            b.session = Session::new(cfg, shared_frame::Instant::ZERO);
        })
        .await;
        let h = b.tcp(echo, 40010);
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
        let (mut sent, mut back) = (0usize, Vec::new());
        for _ in 0..20_000 {
            b.step().await;
            b.echo_step(h, &data, &mut sent, &mut back);
            if back.len() == data.len() {
                break;
            }
        }
        assert_eq!(back.len(), data.len(), "echo incomplete");
        assert!(back == data, "echo corrupted");
        // A second with nothing to carry; the board keeps taking bundles, so the link always has
        // room: only a busy loop would use the CPU (driver and board share this thread).
        let before = thread_cpu_ticks();
        let until = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < until {
            b.step().await;
        }
        let busy = thread_cpu_ticks() - before;
        assert!(
            busy < 50,
            "idle for a second, the driver used {busy} ticks of 100"
        );
        let _ = stop_tx.send(());
    };
    let (res, ()) = tokio::join!(drv, board);
    res.unwrap();
}

/// A board that stops answering once its session is up (a half-open stream, a stalled usbipd):
/// the driver must close the link when the session times out, so the transport can re-accept or
/// redial, and serve the next board that comes up.
#[tokio::test(flavor = "current_thread")]
async fn silent_board_after_setup_gets_its_link_closed() {
    let (drv, (ev_tx, down_tx, down_rx, stop_tx)) = loopback_driver();
    let board = async move {
        let mut b = board_up(ev_tx.clone(), down_tx, down_rx, |_| ()).await;
        // Only the host talks now; its session gives up after peer_timeout (5 s).
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            while b.from_host.recv().await.is_some() {}
        })
        .await;
        assert!(
            closed.is_ok(),
            "the link to the silent board is still open after 30 s"
        );
        // The transport reports the loss and brings the next board.
        ev_tx
            .send(LinkEvent::down("closed by the driver"))
            .await
            .unwrap();
        let (down_tx, down_rx) = mpsc::channel(2);
        let next = board_up(ev_tx, down_tx, down_rx, |_| ()).await;
        assert!(next.up, "the next board's session came up");
        let _ = stop_tx.send(());
    };
    let (res, ()) = tokio::join!(drv, board);
    res.unwrap();
}

/// CPU time (user + system, clock ticks of 10 ms) the calling thread has used.
#[cfg(target_os = "linux")]
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the parenthesised name start at field 3 (state); utime and stime are 14, 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

impl Board {
    /// One client turn of an echo exchange on `h`: send what fits of `data` (closing after the
    /// last byte) and take what came back.
    fn echo_step(&mut self, h: SocketHandle, data: &[u8], sent: &mut usize, back: &mut Vec<u8>) {
        let s = self.sockets.get_mut::<tcp::Socket<'_>>(h);
        if s.can_send() && *sent < data.len() {
            *sent += s.send_slice(&data[*sent..]).unwrap();
            if *sent == data.len() {
                s.close();
            }
        }
        if s.can_recv() {
            s.recv(|d| {
                back.extend_from_slice(d);
                (d.len(), ())
            })
            .unwrap();
        }
    }

    /// `n` board servers on `port` (smoltcp: one connection per listening socket).
    fn listen(&mut self, port: u16, n: usize) -> Vec<SocketHandle> {
        (0..n)
            .map(|_| {
                let mut s = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; 256 * 1024]),
                    tcp::SocketBuffer::new(vec![0; 256 * 1024]),
                );
                s.set_ack_delay(None);
                s.listen(port).unwrap();
                self.sockets.add(s)
            })
            .collect()
    }

    /// The board's echo service: echoes what arrives; after the client's FIN, finishes
    /// sending and closes.
    fn serve_echo(&mut self, servers: &[SocketHandle]) {
        for &h in servers {
            let s = self.sockets.get_mut::<tcp::Socket<'_>>(h);
            while s.can_recv() && s.send_capacity() - s.send_queue() > 0 {
                let room = s.send_capacity() - s.send_queue();
                let mut buf = vec![0u8; room.min(65536)];
                let n = s.recv_slice(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                assert_eq!(s.send_slice(&buf[..n]).unwrap(), n);
            }
            if s.state() == tcp::State::CloseWait && s.send_queue() == 0 {
                s.close();
            }
        }
    }
}

impl Board {
    /// A board UDP echo service on `port`.
    fn udp_echo(&mut self, port: u16) -> SocketHandle {
        use smoltcp::socket::udp;
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]);
        let mut s = udp::Socket::new(buf(), buf());
        s.bind(port).unwrap();
        self.sockets.add(s)
    }

    fn serve_udp_echo(&mut self, h: SocketHandle) {
        use smoltcp::socket::udp;
        let s = self.sockets.get_mut::<udp::Socket<'_>>(h);
        while let Ok((data, meta)) = s.recv() {
            let (data, to) = (data.to_vec(), meta.endpoint);
            s.send_slice(&data, to).unwrap();
        }
    }
}

/// Two laptop peers each send 3 datagrams through a UDP forward; returns how many replies each
/// got back (a reply must carry what that peer sent).
fn udp_round_trips(port: u16) -> (usize, usize) {
    let peers: Vec<std::net::UdpSocket> = (0..2)
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .collect();
    let mut got = [0usize; 2];
    for round in 0..3u8 {
        for (i, p) in peers.iter().enumerate() {
            p.send_to(&[i as u8, round], ("127.0.0.1", port)).unwrap();
        }
        for (i, p) in peers.iter().enumerate() {
            let mut buf = [0u8; 16];
            if let Ok(n) = p.recv(&mut buf)
                && buf[..n] == [i as u8, round]
            {
                got[i] += 1;
            }
        }
    }
    (got[0], got[1])
}

/// A free loopback port for a forward (bound and released; the test binds it right after).
fn free_port() -> u16 {
    closed_port().port()
}

/// Laptop clients reach the fake board's port 22 through `--forward` and through `connect`
/// (the control socket turned into the stream), with half-close keeping every byte; a forward
/// to a port nothing listens on resets the client at once. (On Windows the control channel is a
/// named pipe, which cannot half-close: there the echo through `connect` is left out.)
#[tokio::test(flavor = "current_thread")]
async fn laptop_reaches_the_board_through_a_forward_and_connect() {
    use qbkit_host::forward::ForwardSpec;

    let dir = std::env::temp_dir().join(format!("qbkit-fwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let control = dir.join("control.sock");
    let (ssh_port, closed_port) = (free_port(), free_port());
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ev_tx, ev_rx) = mpsc::channel(8);
    let (down_tx, down_rx) = mpsc::channel(2);
    let mut nat = NatConfig::default();
    nat.mtu = MTU;
    let mut cfg = DriverConfig::new(nat);
    cfg.control_path = Some(control.clone());
    cfg.forwards = vec![
        ForwardSpec::parse(&format!("{ssh_port}:22")).unwrap(),
        ForwardSpec::parse(&format!("{closed_port}:23")).unwrap(),
        ForwardSpec::parse(&format!("udp/{udp_port}:5353")).unwrap(),
    ];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drv = driver::run(cfg, ev_rx, async {
        let _ = stop_rx.await;
    });

    let board = async move {
        let mut servers = Vec::new();
        let mut udp_echo = None;
        let mut b = board_up(ev_tx, down_tx, down_rx, |b| {
            servers = b.listen(22, 2);
            udp_echo = Some(b.udp_echo(5353));
        })
        .await;
        let udp_echo = udp_echo.unwrap();
        let forward = tokio::task::spawn_blocking(move || {
            echo_client(Box::new(
                std::net::TcpStream::connect(("127.0.0.1", ssh_port)).unwrap(),
            ))
        });
        #[cfg(unix)]
        let via_connect = tokio::spawn({
            let control = control.clone();
            async move {
                let s = qbkit_host::status::connect_stream(&control, "10.47.0.2:22", None).await;
                echo_client_async(s.unwrap()).await
            }
        });
        #[cfg(not(unix))]
        let via_connect = tokio::spawn(async { true });
        let refused = tokio::task::spawn_blocking(move || reset_after(closed_port));
        let udp = tokio::task::spawn_blocking(move || udp_round_trips(udp_port));
        let connect_refused = tokio::spawn({
            let control = control.clone();
            async move {
                qbkit_host::status::connect_stream(&control, "23", None)
                    .await
                    .map(|_| ())
                    .unwrap_err()
                    .to_string()
            }
        });
        for _ in 0..30_000 {
            b.step().await;
            b.serve_echo(&servers);
            b.serve_udp_echo(udp_echo);
            if forward.is_finished()
                && via_connect.is_finished()
                && refused.is_finished()
                && udp.is_finished()
                && connect_refused.is_finished()
            {
                break;
            }
        }
        assert!(
            forward.await.unwrap(),
            "echo through the forward incomplete"
        );
        assert!(
            via_connect.await.unwrap(),
            "echo through connect incomplete"
        );
        let took = refused.await.unwrap();
        assert!(
            took < Duration::from_secs(2),
            "closed board port took {took:?}"
        );
        assert_eq!(udp.await.unwrap(), (3, 3), "UDP replies per peer");
        let err = connect_refused.await.unwrap();
        assert!(err.contains("refused"), "{err}");

        check_forward_status(&mut b, control).await;
        let _ = stop_tx.send(());
    };
    let (res, ()) = tokio::join!(drv, board);
    res.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes 300 000 bytes from a second thread, half-closes, reads everything back until EOF:
/// true when every byte came back in order.
fn echo_client(mut stream: Box<dyn ReadWriteShutdown>) -> bool {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let writer = {
        let mut w = stream.try_clone_box();
        let data = data.clone();
        std::thread::spawn(move || {
            w.write_all(&data).unwrap();
            w.shutdown_write();
        })
    };
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back == data
}

/// [`echo_client`] on the async stream `connect` gives.
#[cfg(unix)]
async fn echo_client_async(s: qbkit_host::platform::ControlClient) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = tokio::io::split(s);
    let write = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back);
    let ((), n) = tokio::join!(write, read);
    n.unwrap();
    back == data
}

/// Connects to a forward whose board port is closed; returns how long until the reset.
fn reset_after(port: u16) -> Duration {
    let t0 = std::time::Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let r = stream.read(&mut [0u8; 16]);
    assert!(
        matches!(&r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    t0.elapsed()
}

/// After the clients of `laptop_reaches_the_board_through_a_forward_and_connect`: status counts
/// the forwards' connections and bytes.
async fn check_forward_status(b: &mut Board, control: std::path::PathBuf) {
    // The status client blocks: run it beside the loop.
    let query = tokio::task::spawn_blocking(move || qbkit_host::status::query(&control));
    while !query.is_finished() {
        b.step().await;
    }
    let doc = query.await.unwrap().unwrap();
    let s: qbkit_host::status::Status = serde_json::from_str(&doc).unwrap();
    let f = &s.forwards[0];
    assert_eq!((f.connections, f.active), (1, 0), "{f:?}");
    assert_eq!(f.bytes_to_board, 300_000, "{f:?}");
    assert_eq!(f.bytes_from_board, 300_000, "{f:?}");
    assert_eq!(s.forwards[1].refused, 1, "{:?}", s.forwards[1]);
}

/// A byte stream the echo client can split into a writer thread and a reader.
trait ReadWriteShutdown: std::io::Read + std::io::Write + Send {
    fn try_clone_box(&self) -> Box<dyn ReadWriteShutdown>;
    fn shutdown_write(&mut self);
}

impl ReadWriteShutdown for std::net::TcpStream {
    fn try_clone_box(&self) -> Box<dyn ReadWriteShutdown> {
        Box::new(self.try_clone().unwrap())
    }
    fn shutdown_write(&mut self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}
