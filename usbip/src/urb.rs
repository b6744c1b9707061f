//! The URB stream after a successful import: USBIP_CMD_SUBMIT / USBIP_RET_SUBMIT and
//! USBIP_CMD_UNLINK / USBIP_RET_UNLINK. Every message starts with a 48-byte big-endian header;
//! submits in the OUT direction and IN replies are followed by the transfer data.
//!
//! ```text
//!  usbip_header_basic (20): command u32 │ seqnum u32 │ devid u32 │ direction u32 (0 out, 1 in) │ ep u32
//!  CMD_SUBMIT (1):  basic │ transfer_flags u32 │ transfer_buffer_length u32 │ start_frame u32 │
//!                   number_of_packets u32 │ interval u32 │ setup [8] (USB order: little-endian fields)
//!                   then transfer_buffer_length bytes when direction = out
//!  RET_SUBMIT (3):  basic │ status i32 │ actual_length u32 │ start_frame u32 │ number_of_packets u32 │
//!                   error_count u32 │ pad [8]
//!                   then actual_length bytes when the URB was IN (the reply's direction field is 0:
//!                   only the submitter knows, so the client decides the payload length)
//!  CMD_UNLINK (2):  basic │ unlink_seqnum u32 │ pad [24]
//!  RET_UNLINK (4):  basic │ status i32 (-ECONNRESET: unlinked, 0: it had completed) │ pad [24]
//! ```
//!
//! [`Pdu::parse`] reads a header (total: any 48 bytes give a value or an [`Error`]); [`Pdu::emit`]
//! writes one. The payload length rules live with the caller ([`Client`](crate::Client) for replies,
//! [`CmdSubmit::payload_len`] for a server reading commands).
//!
//! Transfer flags are the `USBIP_URB_*` values of `include/uapi/linux/usbip.h`, which equal the kernel's
//! `URB_*` values for every flag used here. `number_of_packets` for a non-isochronous URB: the spec text
//! says 0xffffffff, the kernel's vhci-hcd sends `urb->number_of_packets`, which is 0. Servers ignore it
//! unless the endpoint is isochronous; this client sends 0 like vhci-hcd and accepts both.

use crate::Error;
use crate::op::be32;

/// Size of every URB-stream header.
pub const HEADER_LEN: usize = 48;
/// Command: submit an URB.
pub const USBIP_CMD_SUBMIT: u32 = 1;
/// Command: unlink an URB.
pub const USBIP_CMD_UNLINK: u32 = 2;
/// Reply: URB completed.
pub const USBIP_RET_SUBMIT: u32 = 3;
/// Reply: unlink done.
pub const USBIP_RET_UNLINK: u32 = 4;

/// `USBIP_URB_*` transfer flags (`include/uapi/linux/usbip.h`).
pub mod flags {
    /// Treat a short IN transfer as an error (-EREMOTEIO).
    pub const SHORT_NOT_OK: u32 = 0x0001;
    /// End a bulk OUT transfer whose length is a multiple of wMaxPacketSize with a zero-length packet.
    pub const ZERO_PACKET: u32 = 0x0040;
    /// No completion interrupt needed (a hint).
    pub const NO_INTERRUPT: u32 = 0x0080;
    /// The URB reads from the device.
    pub const DIR_IN: u32 = 0x0200;
}

/// Transfer direction, as in the header's `direction` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Host to device (0).
    Out,
    /// Device to host (1).
    In,
}

impl Direction {
    /// The wire value.
    pub const fn to_u32(self) -> u32 {
        match self {
            Self::Out => 0,
            Self::In => 1,
        }
    }

    fn parse(v: u32, message: &'static str) -> Result<Self, Error> {
        match v {
            0 => Ok(Self::Out),
            1 => Ok(Self::In),
            value => Err(Error::BadField {
                message,
                field: "direction",
                value,
            }),
        }
    }
}

/// A USB control setup packet (USB 2.0 §9.3). Its fields are little-endian on the wire, unlike the
/// USB/IP header around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SetupPacket {
    /// bmRequestType; bit 7 set = device to host.
    pub request_type: u8,
    /// bRequest.
    pub request: u8,
    /// wValue.
    pub value: u16,
    /// wIndex.
    pub index: u16,
    /// wLength: bytes of the data stage.
    pub length: u16,
}

impl SetupPacket {
    /// bmRequestType: device to host, standard, device.
    pub const IN_STANDARD_DEVICE: u8 = 0x80;
    /// bmRequestType: host to device, standard, device.
    pub const OUT_STANDARD_DEVICE: u8 = 0x00;
    /// GET_DESCRIPTOR.
    pub const GET_DESCRIPTOR: u8 = 6;
    /// GET_CONFIGURATION.
    pub const GET_CONFIGURATION: u8 = 8;
    /// SET_CONFIGURATION.
    pub const SET_CONFIGURATION: u8 = 9;

    /// The direction of the data stage.
    pub const fn direction(&self) -> Direction {
        if self.request_type & 0x80 != 0 {
            Direction::In
        } else {
            Direction::Out
        }
    }

    /// GET_DESCRIPTOR(type, index) for `length` bytes.
    pub const fn get_descriptor(desc_type: u8, index: u8, length: u16) -> Self {
        Self {
            request_type: Self::IN_STANDARD_DEVICE,
            request: Self::GET_DESCRIPTOR,
            value: ((desc_type as u16) << 8) | index as u16,
            index: 0,
            length,
        }
    }

    /// GET_CONFIGURATION (one byte: the active configuration value).
    pub const fn get_configuration() -> Self {
        Self {
            request_type: Self::IN_STANDARD_DEVICE,
            request: Self::GET_CONFIGURATION,
            value: 0,
            index: 0,
            length: 1,
        }
    }

    /// SET_CONFIGURATION(value).
    pub const fn set_configuration(value: u8) -> Self {
        Self {
            request_type: Self::OUT_STANDARD_DEVICE,
            request: Self::SET_CONFIGURATION,
            value: value as u16,
            index: 0,
            length: 0,
        }
    }

    /// The 8 wire bytes.
    pub fn to_bytes(&self) -> [u8; 8] {
        let v = self.value.to_le_bytes();
        let i = self.index.to_le_bytes();
        let l = self.length.to_le_bytes();
        [
            self.request_type,
            self.request,
            v[0],
            v[1],
            i[0],
            i[1],
            l[0],
            l[1],
        ]
    }

    /// From the 8 wire bytes.
    pub const fn from_bytes(b: [u8; 8]) -> Self {
        Self {
            request_type: b[0],
            request: b[1],
            value: u16::from_le_bytes([b[2], b[3]]),
            index: u16::from_le_bytes([b[4], b[5]]),
            length: u16::from_le_bytes([b[6], b[7]]),
        }
    }
}

/// USBIP_CMD_SUBMIT header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmdSubmit {
    /// Sequence number (never 0 from this client).
    pub seqnum: u32,
    /// `busnum << 16 | devnum` of the imported device.
    pub devid: u32,
    /// Direction of the transfer.
    pub direction: Direction,
    /// Endpoint number without the direction bit (0 = control).
    pub ep: u32,
    /// `USBIP_URB_*` flags ([`flags`]).
    pub transfer_flags: u32,
    /// Bytes to send (OUT) or buffer size (IN).
    pub transfer_buffer_length: u32,
    /// ISO start frame (0).
    pub start_frame: u32,
    /// ISO packet count (0 for other transfers; see the module docs).
    pub number_of_packets: u32,
    /// Polling interval for interrupt/ISO (0 for bulk and control).
    pub interval: u32,
    /// Setup packet for control transfers, zeros otherwise.
    pub setup: [u8; 8],
}

impl CmdSubmit {
    /// Bytes of transfer data that follow the header on the wire.
    pub const fn payload_len(&self) -> u32 {
        match self.direction {
            Direction::Out => self.transfer_buffer_length,
            Direction::In => 0,
        }
    }
}

/// USBIP_RET_SUBMIT header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetSubmit {
    /// Sequence number of the URB this completes.
    pub seqnum: u32,
    /// 0 from servers.
    pub devid: u32,
    /// Raw direction field (0 from servers; not trusted).
    pub direction: u32,
    /// Raw ep field (0 from servers; not trusted).
    pub ep: u32,
    /// 0 or a negative errno ([`status_name`]).
    pub status: i32,
    /// Bytes transferred; for an IN URB, the data that follows the header.
    pub actual_length: u32,
    /// ISO start frame.
    pub start_frame: u32,
    /// ISO packet count (0 or 0xffffffff for other transfers).
    pub number_of_packets: u32,
    /// ISO error count.
    pub error_count: u32,
}

/// USBIP_CMD_UNLINK header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmdUnlink {
    /// Sequence number of this request.
    pub seqnum: u32,
    /// `busnum << 16 | devnum`.
    pub devid: u32,
    /// Direction field (0 in practice).
    pub direction: u32,
    /// 0 for UNLINK.
    pub ep: u32,
    /// The URB to unlink.
    pub unlink_seqnum: u32,
}

/// USBIP_RET_UNLINK header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetUnlink {
    /// Sequence number of the CMD_UNLINK this answers.
    pub seqnum: u32,
    /// 0 from servers.
    pub devid: u32,
    /// Raw direction field.
    pub direction: u32,
    /// Raw ep field.
    pub ep: u32,
    /// -ECONNRESET (-104): the URB was unlinked and gets no RET_SUBMIT; 0: it had already completed.
    pub status: i32,
}

/// One URB-stream header of any of the four kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pdu {
    /// Client → server: submit.
    CmdSubmit(CmdSubmit),
    /// Server → client: completion.
    RetSubmit(RetSubmit),
    /// Client → server: unlink.
    CmdUnlink(CmdUnlink),
    /// Server → client: unlink result.
    RetUnlink(RetUnlink),
}

mod field {
    pub(super) const COMMAND: usize = 0;
    pub(super) const SEQNUM: usize = 4;
    pub(super) const DEVID: usize = 8;
    pub(super) const DIRECTION: usize = 12;
    pub(super) const EP: usize = 16;
    // Submit: flags / status, length, start_frame, packets, interval / error_count, setup / pad.
    pub(super) const W0: usize = 20;
    pub(super) const W1: usize = 24;
    pub(super) const W2: usize = 28;
    pub(super) const W3: usize = 32;
    pub(super) const W4: usize = 36;
    pub(super) const SETUP: core::ops::Range<usize> = 40..48;
}

impl Pdu {
    /// Parses a header from the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// Total: any input gives a value or an error. Checks the command code and, for CMD_SUBMIT, the
    /// direction; reply fields the server "shall set to 0" are kept raw and not judged.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated {
                need: HEADER_LEN,
                have: buf.len(),
            });
        }
        let w = |at| be32(buf, at);
        let (seqnum, devid, direction, ep) = (
            w(field::SEQNUM),
            w(field::DEVID),
            w(field::DIRECTION),
            w(field::EP),
        );
        Ok(match w(field::COMMAND) {
            USBIP_CMD_SUBMIT => Self::CmdSubmit(CmdSubmit {
                seqnum,
                devid,
                direction: Direction::parse(direction, "CMD_SUBMIT")?,
                ep,
                transfer_flags: w(field::W0),
                transfer_buffer_length: w(field::W1),
                start_frame: w(field::W2),
                number_of_packets: w(field::W3),
                interval: w(field::W4),
                setup: [
                    buf[40], buf[41], buf[42], buf[43], buf[44], buf[45], buf[46], buf[47],
                ],
            }),
            USBIP_RET_SUBMIT => Self::RetSubmit(RetSubmit {
                seqnum,
                devid,
                direction,
                ep,
                status: w(field::W0).cast_signed(),
                actual_length: w(field::W1),
                start_frame: w(field::W2),
                number_of_packets: w(field::W3),
                error_count: w(field::W4),
            }),
            USBIP_CMD_UNLINK => Self::CmdUnlink(CmdUnlink {
                seqnum,
                devid,
                direction,
                ep,
                unlink_seqnum: w(field::W0),
            }),
            USBIP_RET_UNLINK => Self::RetUnlink(RetUnlink {
                seqnum,
                devid,
                direction,
                ep,
                status: w(field::W0).cast_signed(),
            }),
            other => return Err(Error::BadCommand(other)),
        })
    }

    /// Appends the 48-byte header (not the payload).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        let b = &mut out[start..];
        let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let (cmd, seq, devid, dir, ep, w0) = match *self {
            Self::CmdSubmit(c) => {
                put(field::W1, c.transfer_buffer_length);
                put(field::W2, c.start_frame);
                put(field::W3, c.number_of_packets);
                put(field::W4, c.interval);
                (
                    USBIP_CMD_SUBMIT,
                    c.seqnum,
                    c.devid,
                    c.direction.to_u32(),
                    c.ep,
                    c.transfer_flags,
                )
            }
            Self::RetSubmit(r) => {
                put(field::W1, r.actual_length);
                put(field::W2, r.start_frame);
                put(field::W3, r.number_of_packets);
                put(field::W4, r.error_count);
                (
                    USBIP_RET_SUBMIT,
                    r.seqnum,
                    r.devid,
                    r.direction,
                    r.ep,
                    r.status.cast_unsigned(),
                )
            }
            Self::CmdUnlink(c) => (
                USBIP_CMD_UNLINK,
                c.seqnum,
                c.devid,
                c.direction,
                c.ep,
                c.unlink_seqnum,
            ),
            Self::RetUnlink(r) => (
                USBIP_RET_UNLINK,
                r.seqnum,
                r.devid,
                r.direction,
                r.ep,
                r.status.cast_unsigned(),
            ),
        };
        put(field::COMMAND, cmd);
        put(field::SEQNUM, seq);
        put(field::DEVID, devid);
        put(field::DIRECTION, dir);
        put(field::EP, ep);
        put(field::W0, w0);
        if let Self::CmdSubmit(c) = self {
            b[field::SETUP].copy_from_slice(&c.setup);
        }
    }
}

/// -ECONNRESET: the status of an unlinked URB.
pub const ECONNRESET: i32 = -104;

/// A short name for a URB status (0 or a negative Linux errno, as usbip-host and vudc report them).
pub fn status_name(status: i32) -> &'static str {
    match status {
        0 => "ok",
        -2 => "ENOENT (URB killed)",
        -19 => "ENODEV (device gone)",
        -32 => "EPIPE (endpoint stalled)",
        -62 => "ETIME (device did not respond)",
        -71 => "EPROTO (protocol error)",
        -75 => "EOVERFLOW (babble: device sent more than asked)",
        -84 => "EILSEQ (CRC or bit-stuffing error)",
        -104 => "ECONNRESET (unlinked)",
        -108 => "ESHUTDOWN (device or host controller shut down)",
        -121 => "EREMOTEIO (short transfer with SHORT_NOT_OK)",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hex;

    // The wire captures in the EXAMPLE section of Documentation/usb/usbip_protocol.rst (a HID device:
    // interrupt IN and OUT on endpoint 1, devid 0x0001000f).
    const CMD_INTR_IN: &str = "00000001 00000d05 0001000f 00000001 00000001 00000200 00000040 \
                               ffffffff 00000000 00000004 00000000 00000000";
    const CMD_INTR_OUT_HDR: &str = "00000001 00000d06 0001000f 00000000 00000001 00000000 00000040 \
                                    ffffffff 00000000 00000004 00000000 00000000";
    const RET_INTR_OUT: &str = "00000003 00000d06 00000000 00000000 00000000 00000000 00000040 \
                                ffffffff 00000000 00000000 00000000 00000000";
    const RET_INTR_IN_HDR: &str = "00000003 00000d05 00000000 00000000 00000000 00000000 00000040 \
                                   ffffffff 00000000 00000000 00000000 00000000";

    #[test]
    fn spec_cmd_intr_in() {
        let b = hex(CMD_INTR_IN);
        let pdu = Pdu::parse(&b).unwrap();
        let want = Pdu::CmdSubmit(CmdSubmit {
            seqnum: 0xd05,
            devid: 0x0001_000f,
            direction: Direction::In,
            ep: 1,
            transfer_flags: flags::DIR_IN,
            transfer_buffer_length: 64,
            start_frame: 0xffff_ffff,
            number_of_packets: 0,
            interval: 4,
            setup: [0; 8],
        });
        assert_eq!(pdu, want);
        let mut out = Vec::new();
        pdu.emit(&mut out);
        assert_eq!(out, b);
        let Pdu::CmdSubmit(c) = pdu else {
            unreachable!()
        };
        assert_eq!(c.payload_len(), 0);
    }

    #[test]
    fn spec_cmd_intr_out() {
        let b = hex(CMD_INTR_OUT_HDR);
        let Pdu::CmdSubmit(c) = Pdu::parse(&b).unwrap() else {
            panic!("not a submit")
        };
        assert_eq!(c.direction, Direction::Out);
        assert_eq!(c.payload_len(), 64);
    }

    #[test]
    fn spec_ret_submits() {
        let b = hex(RET_INTR_OUT);
        let want = Pdu::RetSubmit(RetSubmit {
            seqnum: 0xd06,
            devid: 0,
            direction: 0,
            ep: 0,
            status: 0,
            actual_length: 64,
            start_frame: 0xffff_ffff,
            number_of_packets: 0,
            error_count: 0,
        });
        assert_eq!(Pdu::parse(&b).unwrap(), want);
        let mut out = Vec::new();
        want.emit(&mut out);
        assert_eq!(out, b);
        let Pdu::RetSubmit(r) = Pdu::parse(&hex(RET_INTR_IN_HDR)).unwrap() else {
            panic!()
        };
        assert_eq!((r.seqnum, r.actual_length), (0xd05, 64));
    }

    #[test]
    fn unlink_bytes() {
        // CMD_UNLINK(seqnum 7, unlink 5) and RET_UNLINK(seqnum 7, -ECONNRESET) from the spec table.
        let cmd = hex("00000002 00000007 00110002 00000000 00000000 00000005 \
                       00000000 00000000 00000000 00000000 00000000 00000000");
        let want = Pdu::CmdUnlink(CmdUnlink {
            seqnum: 7,
            devid: 0x0011_0002,
            direction: 0,
            ep: 0,
            unlink_seqnum: 5,
        });
        assert_eq!(Pdu::parse(&cmd).unwrap(), want);
        let mut out = Vec::new();
        want.emit(&mut out);
        assert_eq!(out, cmd);
        let ret = hex("00000004 00000007 00000000 00000000 00000000 ffffff98 \
                       00000000 00000000 00000000 00000000 00000000 00000000");
        let want = Pdu::RetUnlink(RetUnlink {
            seqnum: 7,
            devid: 0,
            direction: 0,
            ep: 0,
            status: ECONNRESET,
        });
        assert_eq!(Pdu::parse(&ret).unwrap(), want);
        out.clear();
        want.emit(&mut out);
        assert_eq!(out, ret);
    }

    #[test]
    fn control_setup_is_little_endian() {
        // GET_DESCRIPTOR(config, 0) for 9 bytes: 80 06 00 02 00 00 09 00 (USB 2.0 §9.4.3).
        let s = SetupPacket::get_descriptor(2, 0, 9);
        assert_eq!(
            s.to_bytes(),
            [0x80, 0x06, 0x00, 0x02, 0x00, 0x00, 0x09, 0x00]
        );
        assert_eq!(SetupPacket::from_bytes(s.to_bytes()), s);
        assert_eq!(s.direction(), Direction::In);
        assert_eq!(
            SetupPacket::set_configuration(1).to_bytes(),
            [0x00, 0x09, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00]
        );
    }

    #[test]
    fn bad_headers() {
        assert_eq!(
            Pdu::parse(&[0; 47]),
            Err(Error::Truncated { need: 48, have: 47 })
        );
        assert_eq!(Pdu::parse(&[0; 48]), Err(Error::BadCommand(0)));
        let mut b = hex(CMD_INTR_IN);
        b[15] = 2;
        assert!(matches!(Pdu::parse(&b), Err(Error::BadField { .. })));
    }
}
