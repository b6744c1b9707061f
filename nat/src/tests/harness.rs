//! The test harness: a `Nat` with a fake clock, helpers to play the driver, and a smoltcp
//! "board kernel" (`Board`) wired to the core through in-memory packet queues.

use std::collections::VecDeque;

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::{BoardSink, Nat, NatConfig, NatEvent, OsEvent};

pub(crate) struct H {
    pub(crate) nat: Nat,
    pub(crate) now: Instant,
    buf: Vec<u8>,
    /// When set, `recv` plays a bundle driver: `poll_ip_packets` into sinks of this many bytes
    /// that hold this poison byte where nothing was written.
    pub(crate) sink: Option<(usize, u8)>,
    /// In sink mode: the packets of each sink filled, in order.
    pub(crate) bundles: Vec<Vec<Vec<u8>>>,
}

/// A bundle's free space as the tests' [`BoardSink`]: `cap` bytes of `poison`, packets appended.
pub(crate) struct TestSink {
    buf: Vec<u8>,
    used: usize,
    pub(crate) packets: Vec<Vec<u8>>,
}

impl TestSink {
    pub(crate) fn new(cap: usize, poison: u8) -> Self {
        Self {
            buf: vec![poison; cap],
            used: 0,
            packets: Vec::new(),
        }
    }
}

impl BoardSink for TestSink {
    fn room(&self) -> usize {
        self.buf.len() - self.used
    }

    fn buffer(&mut self, len: usize) -> Option<&mut [u8]> {
        self.buf.get_mut(self.used..self.used.checked_add(len)?)
    }

    fn commit(&mut self, len: usize) {
        self.packets
            .push(self.buf[self.used..self.used + len].to_vec());
        self.used += len;
    }
}

impl H {
    pub(crate) fn new() -> Self {
        Self::with(NatConfig::default())
    }

    pub(crate) fn with(cfg: NatConfig) -> Self {
        let now = Instant::from_secs(1000);
        let buf = vec![0; cfg.mtu];
        Self {
            nat: Nat::new(cfg, now).expect("valid config"),
            now,
            buf,
            sink: None,
            bundles: Vec::new(),
        }
    }

    pub(crate) fn advance(&mut self, d: Duration) {
        self.now += d;
        while self
            .nat
            .poll_timeout(self.now)
            .is_some_and(|t| t <= self.now)
        {
            self.nat.handle_timeout(self.now);
            // Stop when the only thing due is draining the output queue.
            if self
                .nat
                .poll_timeout(self.now)
                .is_some_and(|t| t <= self.now)
            {
                break;
            }
        }
    }

    /// One packet from the board.
    pub(crate) fn send(&mut self, pkt: &[u8]) {
        self.nat.handle_ip_packet(self.now, pkt);
    }

    /// Everything the core has for the board now.
    pub(crate) fn recv(&mut self) -> Vec<Vec<u8>> {
        if let Some((cap, poison)) = self.sink {
            return self.recv_bundles(cap, poison);
        }
        let mut v = Vec::new();
        while let Some(n) = self.nat.poll_ip_packet(self.now, &mut self.buf) {
            v.push(self.buf[..n].to_vec());
        }
        v
    }

    /// Everything the core has for the board now, through sinks of `cap` bytes of `poison` (one
    /// per bundle, kept in `bundles`), until the core has nothing more.
    pub(crate) fn recv_bundles(&mut self, cap: usize, poison: u8) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while self.nat.has_ip_packets() {
            let mut sink = TestSink::new(cap, poison);
            let left = self.nat.poll_ip_packets(self.now, &mut sink);
            assert!(left.is_none_or(|len| len <= cap), "{left:?} never fits");
            if sink.packets.is_empty() {
                assert!(!self.nat.has_ip_packets(), "a bundle without progress");
                break;
            }
            v.extend(sink.packets.iter().cloned());
            self.bundles.push(sink.packets);
        }
        v
    }

    #[track_caller]
    pub(crate) fn recv_one(&mut self) -> Vec<u8> {
        let mut v = self.recv();
        assert_eq!(
            v.len(),
            1,
            "expected exactly one packet for the board, got {}",
            v.len()
        );
        v.remove(0)
    }

    pub(crate) fn events(&mut self) -> Vec<NatEvent> {
        std::iter::from_fn(|| self.nat.poll_event()).collect()
    }

    pub(crate) fn os(&mut self, ev: OsEvent<'_>) {
        self.nat.handle_os_event(self.now, ev);
    }
}

/// In-memory device for the board's smoltcp stack.
struct QDev<'a> {
    rx: &'a mut VecDeque<Vec<u8>>,
    tx: &'a mut VecDeque<Vec<u8>>,
    mtu: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl phy::Device for QDev<'_> {
    type RxToken<'b>
        = Rx
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}

/// The board's kernel, played by a second smoltcp stack at 10.47.0.2 routing via 10.47.0.1, and
/// at fd47::2/64 routing via fd47::1.
pub(crate) struct Board {
    iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

impl Board {
    pub(crate) fn new(now: Instant, mtu: usize) -> Self {
        let (mut rx, mut tx) = (VecDeque::new(), VecDeque::new());
        let mut dev = QDev {
            rx: &mut rx,
            tx: &mut tx,
            mtu,
        };
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = 42;
        let mut iface = Interface::new(cfg, &mut dev, now);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 47, 0, 2), 24))
                .expect("addr");
            a.push(IpCidr::new(IpAddress::v6(0xfd47, 0, 0, 0, 0, 0, 0, 2), 64))
                .expect("addr");
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(10, 47, 0, 1))
            .expect("route");
        iface
            .routes_mut()
            .add_default_ipv6_route(Ipv6Addr::new(0xfd47, 0, 0, 0, 0, 0, 0, 1))
            .expect("route");
        Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            rx,
            tx,
            mtu,
        }
    }

    /// Open a board TCP connection from `port` to `dst` with `buf`-byte buffers.
    pub(crate) fn connect(
        &mut self,
        port: u16,
        dst: impl Into<SocketAddr>,
        buf: usize,
    ) -> SocketHandle {
        let dst: SocketAddr = dst.into();
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buf]),
            tcp::SocketBuffer::new(vec![0; buf]),
        );
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s.connect(
            self.iface.context(),
            IpEndpoint::new(dst.ip().into(), dst.port()),
            port,
        )
        .expect("connect");
        self.sockets.add(s)
    }

    /// A board TCP server on `port` with `buf`-byte buffers (one connection).
    pub(crate) fn listen(&mut self, port: u16, buf: usize) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buf]),
            tcp::SocketBuffer::new(vec![0; buf]),
        );
        s.set_ack_delay(None);
        s.listen(port).expect("listen");
        self.sockets.add(s)
    }

    /// Queue a packet of the core's (from [`H::recv`]) for the board stack's next poll.
    pub(crate) fn deliver(&mut self, p: Vec<u8>) {
        self.rx.push_back(p);
    }

    pub(crate) fn sock(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(h)
    }

    /// Let the board's stack run and return what it sends, without delivering it.
    #[cfg(target_os = "linux")]
    pub(crate) fn outgoing(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut dev = QDev {
            rx: &mut self.rx,
            tx: &mut self.tx,
            mtu: self.mtu,
        };
        self.iface.poll(now, &mut dev, &mut self.sockets);
        self.tx.drain(..).collect()
    }

    /// Move packets between the board stack and the core until both are quiet (bounded).
    /// Returns the driver events seen meanwhile.
    pub(crate) fn exchange(&mut self, h: &mut H) -> Vec<NatEvent> {
        let mut events = Vec::new();
        for _ in 0..10_000 {
            let mut dev = QDev {
                rx: &mut self.rx,
                tx: &mut self.tx,
                mtu: self.mtu,
            };
            self.iface.poll(h.now, &mut dev, &mut self.sockets);
            let mut moved = false;
            while let Some(p) = self.tx.pop_front() {
                h.send(&p);
                moved = true;
            }
            for p in h.recv() {
                self.rx.push_back(p);
                moved = true;
            }
            events.extend(h.events());
            if !moved {
                return events;
            }
        }
        panic!("exchange did not settle");
    }
}
