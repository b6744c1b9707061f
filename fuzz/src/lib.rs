//! What several fuzz targets share: the link framing and the OS socket events a script picks.

use qbkit_nat::{ConnectError, DatagramError, FlowId, OsEvent};
use shared_frame::Framing;

/// USB with wMaxPacketSize `64 << (n % 5)` (64..=1024) when `usb`, else a byte stream.
pub fn framing(usb: bool, n: u8) -> Framing {
    if usb {
        Framing::Usb {
            max_packet_size: 64 << (n % 5),
        }
    } else {
        Framing::Stream
    }
}

/// What an OS socket did for `flow`, chosen by `kind`; `data` is what it received.
pub fn os_event(flow: FlowId, kind: u8, data: &[u8]) -> OsEvent<'_> {
    match kind % 12 {
        0 => OsEvent::TcpConnected { flow },
        1 => OsEvent::TcpConnectFailed {
            flow,
            error: ConnectError::Refused,
        },
        2 => OsEvent::TcpConnectFailed {
            flow,
            error: ConnectError::HostUnreachable,
        },
        3 => OsEvent::TcpEof { flow },
        4 => OsEvent::TcpReset { flow },
        5 => OsEvent::UdpReceived {
            flow,
            payload: data,
        },
        6 => OsEvent::UdpError {
            flow,
            error: DatagramError::PortUnreachable,
        },
        7 => OsEvent::UdpError {
            flow,
            error: DatagramError::Failed,
        },
        8 => OsEvent::IcmpEchoReply {
            flow,
            seq: 1,
            payload: data,
        },
        9 => OsEvent::IcmpUnavailable { flow },
        10 => OsEvent::TcpConnectFailed {
            flow,
            error: ConnectError::TimedOut,
        },
        _ => OsEvent::TcpConnected { flow },
    }
}
