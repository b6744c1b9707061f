//! Flows the laptop opens towards the board: port forwards and `qbkit-host connect`.
//!
//! The board is reached from the gateway address, as from a router on its link: a TCP
//! connection from the laptop becomes a smoltcp socket that *connects* from
//! `gateway:EPHEMERAL` to `board:PORT`; a UDP peer of a forward becomes a flow whose datagrams
//! leave from `gateway:EPHEMERAL`. Both live in the same flow table, under the same key shape
//! (board endpoint, the other endpoint the board sees), so the board's answers find them the way
//! they find outbound flows, and they share every limit, counter, timeout and eviction rule.
//!
//! ```text
//!  laptop client ─▶ OS socket (driver) ─▶ tcp_open_inbound ─▶ smoltcp SYN gateway:e → board:p
//!  board SYN-ACK ─▶ TcpEstablished ─▶ data both ways as for outbound flows (tcp_send/tcp_recv)
//!  board RST / no answer ─▶ TcpClose { reset: true } ─▶ the laptop client is reset at once
//!  laptop datagram ─▶ udp_open_inbound (once per peer) + OsEvent::UdpReceived ─▶ board:p
//!  board reply to gateway:e ─▶ UdpSend for that flow ─▶ driver sends it to the peer
//! ```
//!
//! Gateway ports come from the dynamic range (49152–65535), handed out in rotation so a port is
//! not reused while the board may still hold the previous connection in TIME-WAIT.

use core::net::{SocketAddr, SocketAddrV4};

use smoltcp::socket::tcp;
use smoltcp::wire::IpEndpoint;

use crate::flow::{FlowKey, FlowKind, TcpFlow, TcpPhase, UdpFlow};
use crate::{FlowId, InboundError, Instant, Nat};

/// First gateway port handed to inbound flows (IANA's dynamic range).
const FIRST_PORT: u16 = 49152;

impl Nat {
    /// Open a TCP connection from the gateway to the board's `port` for a connection the laptop
    /// accepted (`peer` is its remote end, for status output). The driver then owns an OS stream
    /// for the returned flow exactly as for an outbound one: `TcpEstablished` comes when the
    /// board accepts (until then `tcp_send` takes nothing), `TcpClose { reset: true }` when it
    /// refuses or does not answer within `tcp_connect_timeout`. Drain `poll_ip_packet` afterwards.
    pub fn tcp_open_inbound(
        &mut self,
        now: Instant,
        port: u16,
        peer: SocketAddr,
    ) -> Result<FlowId, InboundError> {
        self.now = now;
        let (board, gateway) =
            self.inbound_endpoints(port, |src, dst| FlowKey::Tcp { src, dst })?;
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.cfg.tcp_rx_buffer]),
            tcp::SocketBuffer::new(vec![0; self.cfg.tcp_tx_buffer]),
        );
        sock.set_nagle_enabled(false);
        sock.set_ack_delay(None);
        // The board must answer the SYN within the connect timeout (re-armed by `set_timeout`
        // while the handshake is owed).
        sock.set_timeout(Some(self.cfg.tcp_connect_timeout.min(self.cfg.tcp_timeout)));
        let remote = IpEndpoint::new((*board.ip()).into(), board.port());
        let local = IpEndpoint::new((*gateway.ip()).into(), gateway.port());
        if sock.connect(self.iface.context(), remote, local).is_err() {
            self.counters.drop_inbound_no_room += 1;
            return Err(InboundError::NoRoom);
        }
        let handle = self.sockets.add(sock);
        let flow = TcpFlow {
            phase: TcpPhase::Open { handle },
            readable_armed: true,
            writable_armed: true,
            shutdown_sent: false,
            os_eof: false,
            board_fin: false,
            dirty: false,
            inbound: true,
            established: false,
        };
        let id = self.flows.insert(
            FlowKey::Tcp {
                src: board,
                dst: gateway,
            },
            peer,
            self.now,
            FlowKind::Tcp(flow),
        );
        self.counters.tcp_inbound += 1;
        tracing::trace!(flow = %id, %peer, %board, "nat: inbound TCP connect");
        self.egress_pending = true;
        self.mark_dirty(id);
        Ok(id)
    }

    /// Open a UDP flow from the gateway to the board's `port` for datagrams of the laptop-side
    /// `peer` (one flow per peer of a forward). No `UdpOpen` follows: the driver already has the
    /// socket. Feed the peer's datagrams with `OsEvent::UdpReceived`; the board's replies come
    /// as `UdpSend` for this flow; `UdpClose` when it ages out like any UDP flow.
    pub fn udp_open_inbound(
        &mut self,
        now: Instant,
        port: u16,
        peer: SocketAddr,
    ) -> Result<FlowId, InboundError> {
        self.now = now;
        let (board, gateway) =
            self.inbound_endpoints(port, |src, dst| FlowKey::Udp { src, dst })?;
        let kind = FlowKind::Udp(UdpFlow {
            replied: false,
            dns: false,
            inbound: true,
        });
        let id = self.flows.insert(
            FlowKey::Udp {
                src: board,
                dst: gateway,
            },
            peer,
            self.now,
            kind,
        );
        self.counters.udp_inbound += 1;
        Ok(id)
    }

    /// Room for one more flow and a free gateway port towards `board:port`.
    fn inbound_endpoints(
        &mut self,
        port: u16,
        key: impl Fn(SocketAddrV4, SocketAddrV4) -> FlowKey,
    ) -> Result<(SocketAddrV4, SocketAddrV4), InboundError> {
        if port == 0 {
            return Err(InboundError::PortZero);
        }
        if !self.make_room() {
            self.counters.drop_inbound_no_room += 1;
            return Err(InboundError::NoRoom);
        }
        let board = SocketAddrV4::new(self.cfg.board_ipv4, port);
        let span = u32::from(u16::MAX - FIRST_PORT) + 1;
        for _ in 0..span {
            let p = self.next_inbound_port.max(FIRST_PORT);
            self.next_inbound_port = p.checked_add(1).unwrap_or(FIRST_PORT);
            let gateway = SocketAddrV4::new(self.cfg.gateway_ipv4, p);
            if self.flows.id_of(&key(board, gateway)).is_none() {
                return Ok((board, gateway));
            }
        }
        self.counters.drop_inbound_no_room += 1;
        Err(InboundError::NoRoom)
    }
}
