//! Flows the laptop opens towards the board: port forwards and `qbkit-host connect`.
//!
//! The board is reached from the gateway address of the same IP version as the board address
//! dialled (10.47.0.1 for 10.47.0.2, fd47::1 for fd47::2), as from a router on its link: a TCP
//! connection from the laptop becomes a smoltcp socket that *connects* from
//! `gateway:EPHEMERAL` to `board:PORT`; a UDP peer of a forward becomes a flow whose datagrams
//! leave from `gateway:EPHEMERAL`. Both live in the same flow table, under the same key shape
//! (board endpoint, the other endpoint the board sees), so the board's answers find them the way
//! they find outbound flows, and they share every limit, counter, timeout and eviction rule.
//!
//! ```text
//!  laptop client ─▶ OS socket (driver) ─▶ open_inbound[_to](Tcp) ─▶ smoltcp SYN gateway:e → board:p
//!  board SYN-ACK ─▶ TcpEstablished ─▶ data both ways as for outbound flows (tcp_send/tcp_recv)
//!  board RST / no answer ─▶ TcpClose { reset: true } ─▶ the laptop client is reset at once
//!  laptop datagram ─▶ open_inbound(Udp) (once per peer) + OsEvent::UdpReceived ─▶ board:p
//!  board reply to gateway:e ─▶ UdpSend for that flow ─▶ driver sends it to the peer
//! ```
//!
//! Gateway ports come from the dynamic range (49152–65535), handed out in rotation so a port is
//! not reused while the board may still hold the previous connection in TIME-WAIT.

use core::net::{IpAddr, SocketAddr};

use smoltcp::wire::IpEndpoint;

use crate::flow::{FlowKey, FlowKind, TcpFlow, TcpPhase, UdpFlow};
use crate::sockets::SockId;
use crate::{FlowId, InboundError, Instant, Nat, Protocol};

/// First gateway port handed to inbound flows (IANA's dynamic range).
const FIRST_PORT: u16 = 49152;

impl Nat {
    /// Open a flow from the gateway to the board's `port` for something the laptop side
    /// started (`peer` is its remote end, for status output):
    ///
    /// - TCP, for a connection the laptop accepted. The driver then owns an OS stream for the
    ///   returned flow exactly as for an outbound one: `TcpEstablished` comes when the board
    ///   accepts (until then `tcp_send` takes nothing), `TcpClose { reset: true }` when it
    ///   refuses or does not answer within `tcp_connect_timeout`.
    /// - UDP, for one peer of a forward. No `UdpOpen` follows (the driver has the socket): feed
    ///   the peer's datagrams with `OsEvent::UdpReceived`; the board's replies come as `UdpSend`
    ///   for this flow; `UdpClose` when it ages out like any UDP flow.
    ///
    /// Drain `poll_ip_packet` and `poll_event` afterwards. The board is dialled at its IPv4
    /// address; [`Nat::open_inbound_to`] picks the address.
    pub fn open_inbound(
        &mut self,
        now: Instant,
        protocol: Protocol,
        port: u16,
        peer: SocketAddr,
    ) -> Result<FlowId, InboundError> {
        let board = SocketAddr::new(self.cfg.board_ipv4.into(), port);
        self.open_inbound_to(now, protocol, board, peer)
    }

    /// [`Nat::open_inbound`] to `board`, one of the board's addresses (`board_ipv4` or
    /// `board_ipv6`) with its port; the flow leaves from the gateway address of that version.
    pub fn open_inbound_to(
        &mut self,
        now: Instant,
        protocol: Protocol,
        board: SocketAddr,
        peer: SocketAddr,
    ) -> Result<FlowId, InboundError> {
        self.now = now;
        let gateway_ip: IpAddr = match board.ip() {
            IpAddr::V4(ip) if ip == self.cfg.board_ipv4 => self.cfg.gateway_ipv4.into(),
            IpAddr::V6(ip) if ip == self.cfg.board_ipv6 => self.cfg.gateway_ipv6.into(),
            ip => return Err(InboundError::NotTheBoard(ip)),
        };
        if board.port() == 0 {
            return Err(InboundError::PortZero);
        }
        let key: fn(SocketAddr, SocketAddr) -> FlowKey = match protocol {
            Protocol::Tcp => |src, dst| FlowKey::Tcp { src, dst },
            Protocol::Udp => |src, dst| FlowKey::Udp { src, dst },
            _ => return Err(InboundError::NoPorts),
        };
        if !self.make_room() {
            self.counters.drop_inbound_no_room += 1;
            return Err(InboundError::NoRoom);
        }
        let gateway = self
            .free_gateway_port(gateway_ip, |g| key(board, g))
            .ok_or(InboundError::NoRoom)?;
        let handle = match protocol {
            Protocol::Tcp => Some(self.inbound_socket(board, gateway)?),
            _ => None,
        };
        let kind = match handle {
            Some(handle) => FlowKind::Tcp(TcpFlow::new(TcpPhase::Open { handle }, true)),
            _ => FlowKind::Udp(UdpFlow {
                replied: false,
                dns: None,
                inbound: true,
            }),
        };
        let id = self.flows.insert(key(board, gateway), peer, self.now, kind);
        if let Some(handle) = handle {
            self.counters.tcp_inbound += 1;
            self.sockets.set_owner(handle, Some(id));
            self.mark_dirty(id);
        } else {
            self.counters.udp_inbound += 1;
        }
        tracing::trace!(flow = %id, %peer, %board, ?protocol, "nat: inbound flow");
        Ok(id)
    }

    /// A smoltcp socket connecting from `gateway` to `board`.
    fn inbound_socket(
        &mut self,
        board: SocketAddr,
        gateway: SocketAddr,
    ) -> Result<SockId, InboundError> {
        // The board must answer the SYN within the connect timeout (kept armed by
        // `set_timeout` while the handshake is owed).
        let mut new = self
            .new_tcp_socket(self.cfg.tcp_connect_timeout.min(self.cfg.tcp_timeout))
            .ok_or(InboundError::NoRoom)?;
        let remote = IpEndpoint::new(board.ip().into(), board.port());
        let local = IpEndpoint::new(gateway.ip().into(), gateway.port());
        if new
            .sock
            .connect(self.iface.context(), remote, local)
            .is_err()
        {
            self.counters.drop_inbound_no_room += 1;
            return Err(InboundError::NoRoom);
        }
        Ok(self.sockets.add(new))
    }

    /// The next gateway port in rotation whose flow key is free.
    fn free_gateway_port(
        &mut self,
        ip: IpAddr,
        key: impl Fn(SocketAddr) -> FlowKey,
    ) -> Option<SocketAddr> {
        let span = u32::from(u16::MAX - FIRST_PORT) + 1;
        for _ in 0..span {
            let p = self.next_inbound_port.max(FIRST_PORT);
            self.next_inbound_port = p.checked_add(1).unwrap_or(FIRST_PORT);
            let gateway = SocketAddr::new(ip, p);
            if self.flows.id_of(&key(gateway)).is_none() {
                return Some(gateway);
            }
        }
        self.counters.drop_inbound_no_room += 1;
        None
    }
}
