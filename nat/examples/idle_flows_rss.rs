//! Measures the core's memory: RSS with 1000 idle open TCP flows (each has exchanged a small
//! request and response), then after churning through flows that each moved 256 KiB each way,
//! then with 1000 idle flows again. Board packets are crafted with smoltcp::wire; the "driver"
//! answers connects at once. Linux only (reads VmRSS from /proc/self/status).
//!
//! Run: `cargo run --release -p qbkit-nat --example idle_flows_rss`
//! With glibc, compare `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072` (what the driver's
//! `mallopt` should do) against the default dynamic threshold.

use core::net::{Ipv4Addr, SocketAddrV4};

use qbkit_nat::{Instant, Nat, NatConfig, NatEvent, OsEvent};
use smoltcp::wire::{Ipv4Packet, TcpControl, TcpPacket};

const BOARD: Ipv4Addr = Ipv4Addr::new(10, 47, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn seg(port: u16, control: TcpControl, seq: u32, ack: Option<u32>, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (
        SocketAddrV4::new(BOARD, port),
        SocketAddrV4::new(SERVER, 80),
    );
    qbkit_nat::testing::tcp_segment(src, dst, control, seq, ack, 65000, payload)
}

/// Board-side view of one connection.
struct Conn {
    port: u16,
    seq: u32,
    ack: u32,
    flow: qbkit_nat::FlowId,
}

struct Sim {
    nat: Nat,
    now: Instant,
    out: Vec<u8>,
}

impl Sim {
    /// Deliver everything for the board; returns (port, seq, payload len, syn, fin) per segment.
    fn drain(&mut self) -> Vec<(u16, u32, usize, bool, bool)> {
        let mut v = Vec::new();
        while let Some(n) = self.nat.poll_ip_packet(self.now, &mut self.out) {
            let ip = Ipv4Packet::new_unchecked(&self.out[..n]);
            if let Ok(t) = TcpPacket::new_checked(ip.payload()) {
                v.push((
                    t.dst_port(),
                    t.seq_number().0.cast_unsigned(),
                    t.payload().len(),
                    t.syn(),
                    t.fin(),
                ));
            }
        }
        v
    }

    fn open(&mut self, port: u16) -> Conn {
        self.nat
            .handle_ip_packet(self.now, &seg(port, TcpControl::Syn, 1000, None, &[]));
        let Some(NatEvent::TcpConnect { flow, .. }) = self.nat.poll_event() else {
            panic!("no connect")
        };
        self.nat
            .handle_os_event(self.now, OsEvent::TcpConnected { flow });
        let synack = self.drain();
        let isn = synack[0].1;
        let mut c = Conn {
            port,
            seq: 1001,
            ack: isn.wrapping_add(1),
            flow,
        };
        self.nat.handle_ip_packet(
            self.now,
            &seg(port, TcpControl::None, c.seq, Some(c.ack), &[]),
        );
        while self.nat.poll_event().is_some() {}
        c.seq = 1001;
        c
    }

    /// Board sends `up` bytes, the driver relays; the OS sends `down` bytes back.
    fn exchange(&mut self, c: &mut Conn, up: usize, down: usize) {
        let chunk = vec![0x55u8; 60_000];
        let mut sink = vec![0u8; 256 * 1024];
        let (mut sent_up, mut sent_down, mut got_down) = (0, 0, 0);
        while sent_up < up || got_down < down {
            if sent_up < up {
                let n = chunk.len().min(up - sent_up);
                self.nat.handle_ip_packet(
                    self.now,
                    &seg(c.port, TcpControl::None, c.seq, Some(c.ack), &chunk[..n]),
                );
                c.seq = c.seq.wrapping_add(n as u32);
                sent_up += n;
            }
            while self.nat.tcp_recv(c.flow, &mut sink).unwrap_or(0) > 0 {}
            if sent_down < down {
                sent_down += self
                    .nat
                    .tcp_send(c.flow, &chunk[..chunk.len().min(down - sent_down)])
                    .unwrap_or(0);
            }
            for (_, seq, len, _, _) in self.drain() {
                if len > 0 && seq == c.ack {
                    c.ack = c.ack.wrapping_add(len as u32);
                    got_down += len;
                }
            }
            self.nat.handle_ip_packet(
                self.now,
                &seg(c.port, TcpControl::None, c.seq, Some(c.ack), &[]),
            );
            while self.nat.poll_event().is_some() {}
            self.drain();
        }
    }

    fn close(&mut self, c: &mut Conn) {
        self.nat
            .handle_os_event(self.now, OsEvent::TcpEof { flow: c.flow });
        let fin = self.drain();
        let fin_seq = fin.iter().find(|s| s.4).map_or(c.ack, |s| s.1);
        c.ack = fin_seq.wrapping_add(1);
        self.nat.handle_ip_packet(
            self.now,
            &seg(c.port, TcpControl::Fin, c.seq, Some(c.ack), &[]),
        );
        self.drain();
        let mut sink = [0u8; 64];
        let _ = self.nat.tcp_recv(c.flow, &mut sink);
        while self.nat.poll_event().is_some() {}
        self.drain();
    }
}

fn main() {
    let cfg = NatConfig::default();
    let (tx, rx) = (cfg.tcp_tx_buffer, cfg.tcp_rx_buffer);
    let start = rss_kib();
    let mut sim = Sim {
        nat: Nat::new(cfg, Instant::from_secs(1)).expect("config"),
        now: Instant::from_secs(1),
        out: vec![0; 65535],
    };
    let mut conns: Vec<Conn> = (0..1000).map(|i| sim.open(10_000 + i)).collect();
    for c in &mut conns {
        sim.exchange(c, 200, 500);
    }
    let idle1 = rss_kib();
    println!(
        "buffers per flow: rx {} KiB, tx {} KiB (allocated zeroed, committed only as used)",
        rx / 1024,
        tx / 1024
    );
    println!("RSS at start: {start} KiB");
    let per_flow_x10 = (idle1 - start) * 10 / 1000;
    println!(
        "RSS with {} idle open flows (200 B up, 500 B down each): {idle1} KiB (+{} KiB, {}.{} KiB/flow)",
        sim.nat.flow_count(),
        idle1 - start,
        per_flow_x10 / 10,
        per_flow_x10 % 10
    );
    for c in &mut conns {
        sim.close(c);
    }
    println!("flows after closing all: {}", sim.nat.flow_count());
    let t0 = std::time::Instant::now();
    for round in 0..4u16 {
        let mut batch: Vec<Conn> = (0..50)
            .map(|i| sim.open(20_000 + round * 100 + i))
            .collect();
        for c in &mut batch {
            sim.exchange(c, 256 * 1024, 256 * 1024);
        }
        for c in &mut batch {
            sim.close(c);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "churn moved {} MiB through the core (both ways, board side simulated in-process) in {secs:.2} s",
        200 * 512 / 1024
    );
    let churn = rss_kib();
    println!(
        "RSS after churn (200 flows x 256 KiB each way, 50 at a time), all closed: {churn} KiB, flows {}",
        sim.nat.flow_count()
    );
    let mut conns: Vec<Conn> = (0..1000).map(|i| sim.open(30_000 + i)).collect();
    for c in &mut conns {
        sim.exchange(c, 200, 500);
    }
    let idle2 = rss_kib();
    println!(
        "RSS with {} idle open flows after churn: {idle2} KiB",
        sim.nat.flow_count()
    );
    let c = sim.nat.counters();
    println!(
        "tcp_flows {} tcp_connected {} drops(board queue) {}",
        c.tcp_flows, c.tcp_connected, c.drop_board_queue_full
    );
}
