//! A board with an IP stack for the native end-to-end test (`tests/native-e2e`, run by the
//! workflow's macOS and Windows jobs, where qbkit-gadget, which is Linux-only, cannot run). It
//! dials the host's stream link like `qbkit-gadget run --link tcp://…`, runs a board-role
//! `Session`, and instead of a TUN has smoltcp at the address the LinkConfig gives (default
//! route via the gateway). Once up, it checks what a board user would, through the NAT:
//!
//! - `--http PORT --sha256 HEX`: `GET /big.bin` from the gateway's PORT (the host runs with
//!   `--map-gateway-to-loopback`, so this is the laptop's 127.0.0.1:PORT), body hashed;
//! - `--udp PORT`: 20 datagrams to the gateway's PORT, each echoed back;
//! - `--dns NAME`: an A query for NAME to the gateway's port 53 (the host's OS resolvers);
//! - `--ping ADDR`: 3 ICMP echo requests to ADDR (through the OS: ping sockets, or
//!   IcmpSendEcho2 on Windows), each answered.
//!
//! - `--hold PORT --count N --hold-secs S`: N connections to the gateway's PORT, one after
//!   another, that the board never reads (4 KiB windows), then S more seconds with the link up:
//!   a board that opens connections and never reads, for the host's memory bound
//!   (`tests/netns/never-reading-board-e2e`).
//!
//! Prints `ok <check> <detail>` or `FAIL <check> <why>` per check, exits 0 only if every check
//! passed. Every wait is bounded (`--timeout SECS`, default 60, for the whole run).
//! Usage: stream_board URL [--http PORT --sha256 HEX] [--udp PORT] [--dns NAME] [--ping ADDR]
//! [--hold PORT --count N --hold-secs S]

use std::net::Ipv4Addr;
use std::time::Duration;

use qbkit_link::{BundleReader, Connector, LinkUrl, LinkWrite, write_bundle};
use sha2::{Digest as _, Sha256};
use shared_frame::{DEFAULT_MAX_BUNDLE, Role, Session, SessionConfig, SessionEvent};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr};

mod queue_device;
use queue_device::{MTU, QueueDevice};

#[derive(Default)]
struct Args {
    url: String,
    http: Option<u16>,
    sha256: Option<String>,
    udp: Option<u16>,
    dns: Option<String>,
    ping: Option<Ipv4Addr>,
    hold: Option<u16>,
    count: u16,
    hold_secs: u64,
    timeout: u64,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        timeout: 60,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    a.url = it.next().ok_or("usage: stream_board URL [--http PORT --sha256 HEX] [--udp PORT] [--dns NAME] [--ping ADDR]")?;
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {v}");
        match flag.as_str() {
            "--http" => a.http = Some(v.parse().map_err(bad)?),
            "--sha256" => a.sha256 = Some(v.to_lowercase()),
            "--udp" => a.udp = Some(v.parse().map_err(bad)?),
            "--dns" => a.dns = Some(v),
            "--ping" => a.ping = Some(v.parse().map_err(|_| format!("bad address {v}"))?),
            "--timeout" => a.timeout = v.parse().map_err(bad)?,
            "--hold" => a.hold = Some(v.parse().map_err(bad)?),
            "--count" => a.count = v.parse().map_err(bad)?,
            "--hold-secs" => a.hold_secs = v.parse().map_err(bad)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// The board: smoltcp behind a board-role Session, on a stream link.
struct Board {
    start: std::time::Instant,
    dev: QueueDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    session: Session,
    reader: BundleReader,
    writer: LinkWrite,
    gateway: Option<Ipv4Addr>,
}

impl Board {
    fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// One round: wait (at most 2 ms) for a bundle from the host, run the session and smoltcp,
    /// send what they produced. Err when the link is gone.
    async fn step(&mut self) -> Result<(), String> {
        let wait = tokio::time::sleep(Duration::from_millis(2));
        tokio::select! {
            b = self.reader.next() => match b {
                Ok(Some(b)) => {
                    let now = shared_frame::Instant::from_micros(self.start.elapsed().as_micros() as u64);
                    let rx = &mut self.dev.rx;
                    if let Err(e) = self.session.handle_bundle(now, b, |_, p| rx.push_back(p.to_vec())) {
                        eprintln!("bad bundle from the host: {e}");
                    }
                }
                Ok(None) => return Err("the host closed the link".into()),
                Err(e) => return Err(format!("link: {e}")),
            },
            () = wait => {}
        }
        let now = shared_frame::Instant::from_micros(self.micros());
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
        while let Some(ev) = self.session.poll_event() {
            if let SessionEvent::LinkConfig(lc) = ev
                && let (Some(cidr), Some(gw)) = (lc.ipv4, lc.gateway_v4)
            {
                self.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::new(IpAddress::Ipv4(cidr.addr), cidr.prefix));
                });
                let _ = self.iface.routes_mut().add_default_ipv4_route(gw);
                self.gateway = Some(gw);
            }
        }
        let t = SmolInstant::from_micros(self.micros().cast_signed());
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        while let Some(buf) = self.dev.next_bundle(&mut self.session) {
            write_bundle(&mut self.writer, &buf)
                .await
                .map_err(|e| format!("link: {e}"))?;
        }
        Ok(())
    }

    /// Steps until `done` says the check finished (Some) or the link fails.
    async fn run<T>(&mut self, mut done: impl FnMut(&mut Self) -> Option<T>) -> Result<T, String> {
        loop {
            if let Some(t) = done(self) {
                return Ok(t);
            }
            self.step().await?;
        }
    }

    fn gw(&self) -> IpAddress {
        IpAddress::Ipv4(self.gateway.unwrap_or(Ipv4Addr::new(10, 47, 0, 1)))
    }

    /// HTTP/1.0 GET of /big.bin from the gateway's `port`: (body length, sha256 hex).
    async fn http_get(&mut self, port: u16) -> Result<(usize, String), String> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 1 << 20]),
            tcp::SocketBuffer::new(vec![0; 4096]),
        );
        s.set_ack_delay(None);
        let gw = self.gw();
        let cx = self.iface.context();
        s.connect(cx, (gw, port), 40000)
            .map_err(|e| format!("connect: {e}"))?;
        let h = self.sockets.add(s);
        let mut sent = false;
        let mut resp = Vec::new();
        let mut body_hash = Sha256::new();
        let mut body_len = 0usize;
        let mut header_done = false;
        let r = self
            .run(|b| {
                let s = b.sockets.get_mut::<tcp::Socket<'_>>(h);
                if !sent && s.may_send() {
                    sent = s.send_slice(b"GET /big.bin HTTP/1.0\r\n\r\n").is_ok();
                }
                while s.can_recv() {
                    let _ = s.recv(|d| {
                        if header_done {
                            body_hash.update(&*d);
                            body_len += d.len();
                        } else {
                            resp.extend_from_slice(d);
                            if let Some(i) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
                                header_done = true;
                                body_hash.update(&resp[i + 4..]);
                                body_len += resp.len() - i - 4;
                                resp.truncate(i);
                            }
                        }
                        (d.len(), ())
                    });
                }
                if matches!(
                    s.state(),
                    tcp::State::Closed | tcp::State::CloseWait | tcp::State::TimeWait
                ) && !s.can_recv()
                {
                    s.close();
                    return Some(());
                }
                None
            })
            .await;
        self.sockets.remove(h);
        r?;
        if resp.is_empty() {
            return Err("the connection closed without a response (refused?)".into());
        }
        if !resp.starts_with(b"HTTP/1.0 200") && !resp.starts_with(b"HTTP/1.1 200") {
            return Err(format!(
                "no 200: {}",
                String::from_utf8_lossy(&resp[..resp.len().min(40)])
            ));
        }
        let hex = body_hash.finalize().iter().fold(String::new(), |mut h, b| {
            use std::fmt::Write as _;
            let _ = write!(h, "{b:02x}");
            h
        });
        Ok((body_len, hex))
    }

    /// `n` connections to the gateway's `port`, one after another (10 s for each handshake),
    /// none of them ever read; then `secs` more seconds with the link up, so the host's buffers
    /// towards the board fill. Returns (established, refused or unanswered).
    async fn hold(&mut self, port: u16, n: u16, secs: u64) -> Result<(usize, usize), String> {
        let (mut established, mut refused) = (0, 0);
        for i in 0..n {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 4096]),
                tcp::SocketBuffer::new(vec![0; 4096]),
            );
            let gw = self.gw();
            let cx = self.iface.context();
            s.connect(cx, (gw, port), 41000 + i)
                .map_err(|e| format!("connect: {e}"))?;
            let h = self.sockets.add(s);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let up = self
                .run(|b| match b.sockets.get::<tcp::Socket<'_>>(h).state() {
                    tcp::State::Established => Some(true),
                    tcp::State::Closed => Some(false),
                    _ => (std::time::Instant::now() > deadline).then_some(false),
                })
                .await?;
            if up {
                established += 1;
            } else {
                refused += 1;
            }
        }
        let until = std::time::Instant::now() + Duration::from_secs(secs);
        self.run(|_| (std::time::Instant::now() > until).then_some(()))
            .await?;
        Ok((established, refused))
    }

    /// 20 datagrams to the gateway's `port`; how many came back unchanged.
    async fn udp_echo(&mut self, port: u16) -> Result<usize, String> {
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 32], vec![0; 65536]);
        let mut s = udp::Socket::new(buf(), buf());
        s.bind(40001).map_err(|e| format!("bind: {e}"))?;
        let h = self.sockets.add(s);
        let mut ok = 0;
        for i in 0..20u16 {
            let msg: Vec<u8> = (0..64 + i * 50).map(|j| (j ^ i) as u8).collect();
            for _try in 0..3 {
                let gw = self.gw();
                let _ = self
                    .sockets
                    .get_mut::<udp::Socket<'_>>(h)
                    .send_slice(&msg, (gw, port));
                let deadline = std::time::Instant::now() + Duration::from_secs(1);
                let got = self
                    .run(|b| {
                        let s = b.sockets.get_mut::<udp::Socket<'_>>(h);
                        // A late echo of an earlier try is skipped.
                        while let Ok((d, _)) = s.recv() {
                            if d == msg.as_slice() {
                                return Some(true);
                            }
                        }
                        (std::time::Instant::now() > deadline).then_some(false)
                    })
                    .await?;
                if got {
                    ok += 1;
                    break;
                }
            }
        }
        self.sockets.remove(h);
        Ok(ok)
    }

    /// An A query for `name` to the gateway's DNS: the addresses in the answer.
    async fn dns_a(&mut self, name: &str) -> Result<Vec<Ipv4Addr>, String> {
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]);
        let mut s = udp::Socket::new(buf(), buf());
        s.bind(40002).map_err(|e| format!("bind: {e}"))?;
        let h = self.sockets.add(s);
        let mut q = vec![0x51, 0x4b, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.trim_end_matches('.').split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let gw = self.gw();
        for _try in 0..3 {
            let _ = self
                .sockets
                .get_mut::<udp::Socket<'_>>(h)
                .send_slice(&q, (gw, 53));
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            let reply = self
                .run(|b| {
                    let s = b.sockets.get_mut::<udp::Socket<'_>>(h);
                    if let Ok((d, _)) = s.recv() {
                        return Some(Some(d.to_vec()));
                    }
                    (std::time::Instant::now() > deadline).then_some(None)
                })
                .await?;
            if let Some(r) = reply {
                self.sockets.remove(h);
                return parse_a_answers(&r, q.len());
            }
        }
        self.sockets.remove(h);
        Err("no answer".into())
    }

    /// 3 echo requests to `dst`: how many were answered.
    async fn ping(&mut self, dst: Ipv4Addr) -> Result<usize, String> {
        let buf = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 4096]);
        let mut s = icmp::Socket::new(buf(), buf());
        s.bind(icmp::Endpoint::Ident(0x4b51))
            .map_err(|e| format!("bind: {e}"))?;
        let h = self.sockets.add(s);
        let mut ok = 0;
        for seq in 0..3u16 {
            let data = [0x5a; 32];
            let req = Icmpv4Repr::EchoRequest {
                ident: 0x4b51,
                seq_no: seq,
                data: &data,
            };
            let mut pkt = vec![0; req.buffer_len()];
            req.emit(
                &mut Icmpv4Packet::new_unchecked(&mut pkt),
                &smoltcp::phy::ChecksumCapabilities::default(),
            );
            let _ = self
                .sockets
                .get_mut::<icmp::Socket<'_>>(h)
                .send_slice(&pkt, IpAddress::Ipv4(dst));
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            let got = self
                .run(|b| {
                    let s = b.sockets.get_mut::<icmp::Socket<'_>>(h);
                    if let Ok((d, _)) = s.recv()
                        && let Ok(p) = Icmpv4Packet::new_checked(d)
                        && let Ok(Icmpv4Repr::EchoReply { seq_no, .. }) =
                            Icmpv4Repr::parse(&p, &smoltcp::phy::ChecksumCapabilities::default())
                    {
                        return Some(seq_no == seq);
                    }
                    (std::time::Instant::now() > deadline).then_some(false)
                })
                .await?;
            ok += usize::from(got);
        }
        self.sockets.remove(h);
        Ok(ok)
    }
}

/// The A records of a DNS response to our one-question query (`qlen`: the query's length).
fn parse_a_answers(r: &[u8], qlen: usize) -> Result<Vec<Ipv4Addr>, String> {
    if r.len() < qlen || r[..2] != [0x51, 0x4b] {
        return Err("not our answer".into());
    }
    if r[3] & 0x0f != 0 {
        return Err(format!("rcode {}", r[3] & 0x0f));
    }
    let ancount = u16::from_be_bytes([r[6], r[7]]);
    let mut i = qlen;
    let mut out = Vec::new();
    for _ in 0..ancount {
        // name: a pointer (2 bytes) or labels
        while i < r.len() && r[i] != 0 && r[i] & 0xc0 != 0xc0 {
            i += 1 + usize::from(r[i]);
        }
        i += if r.get(i).is_some_and(|b| b & 0xc0 == 0xc0) {
            2
        } else {
            1
        };
        let Some(h) = r.get(i..i + 10) else { break };
        let (kind, len) = (
            u16::from_be_bytes([h[0], h[1]]),
            usize::from(u16::from_be_bytes([h[8], h[9]])),
        );
        if kind == 1
            && len == 4
            && let Some(a) = r.get(i + 10..i + 14)
        {
            out.push(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
        }
        i += 10 + len;
    }
    Ok(out)
}

async fn checks(args: &Args) -> Result<bool, String> {
    let mut conn = Connector::new(LinkUrl::parse(&args.url).map_err(|e| e.to_string())?);
    let (read, write) = loop {
        match conn.connect().await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut dev = QueueDevice::default();
    let iface = Interface::new(
        Config::new(HardwareAddress::Ip),
        &mut dev,
        SmolInstant::from_micros(0),
    );
    let mut cfg = SessionConfig::new(Role::Board, "stream-board");
    cfg.max_mtu = MTU as u32;
    let mut board = Board {
        start: std::time::Instant::now(),
        dev,
        iface,
        sockets: SocketSet::new(Vec::new()),
        session: Session::new(cfg, shared_frame::Instant::ZERO),
        reader: BundleReader::new(read, DEFAULT_MAX_BUNDLE),
        writer: write,
        gateway: None,
    };
    board.run(|b| b.gateway.map(|_| ())).await?;
    println!("ok link up, gateway {}", board.gw());
    let mut all = true;
    let mut report = |name: &str, r: Result<String, String>| match r {
        Ok(detail) => println!("ok {name} {detail}"),
        Err(why) => {
            all = false;
            println!("FAIL {name} {why}");
        }
    };
    if let Some(port) = args.http {
        let started = std::time::Instant::now();
        let r = board
            .http_get(port)
            .await
            .and_then(|(n, hex)| match &args.sha256 {
                Some(want) if *want != hex => Err(format!("{n} bytes, sha256 {hex} != {want}")),
                _ => Ok(format!(
                    "{n} bytes, sha256 {hex}, {:.0} Mbit/s",
                    f64::from(u32::try_from(n).unwrap_or(u32::MAX)) * 8.0
                        / 1e6
                        / started.elapsed().as_secs_f64()
                )),
            });
        report("http", r);
    }
    if let Some(port) = args.udp {
        let r = board.udp_echo(port).await.and_then(|n| {
            if n >= 18 {
                Ok(format!("{n}/20 echoed"))
            } else {
                Err(format!("{n}/20 echoed"))
            }
        });
        report("udp", r);
    }
    if let Some(name) = &args.dns {
        let r = board.dns_a(name).await.and_then(|ips| {
            if ips.is_empty() {
                Err("no A record".into())
            } else {
                Ok(format!("{name} -> {ips:?}"))
            }
        });
        report("dns", r);
    }
    if let Some(dst) = args.ping {
        let r = board.ping(dst).await.and_then(|n| {
            if n == 3 {
                Ok(format!("{dst}: 3/3 answered"))
            } else {
                Err(format!("{dst}: {n}/3 answered"))
            }
        });
        report("ping", r);
    }
    if let Some(port) = args.hold {
        let r = board
            .hold(port, args.count, args.hold_secs)
            .await
            .map(|(e, r)| format!("{e} connections established, {r} refused, none read"));
        report("hold", r);
    }
    Ok(all)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let code = match tokio::time::timeout(Duration::from_secs(a.timeout), checks(&a)).await {
        Ok(Ok(true)) => 0,
        Ok(Ok(false)) => 1,
        Ok(Err(e)) => {
            println!("FAIL {e}");
            1
        }
        Err(_) => {
            println!("FAIL timed out after {} s", a.timeout);
            1
        }
    };
    std::process::exit(code);
}
