//! A hostile USB host for the gadget-badusb VM scenario: claims qbkit-gadget's vendor interface
//! (1209:0001, class 0xff) and feeds it bad input, then plays a minimal valid peer.
//!
//! `attack`: with nusb, sends one *class* of bad bulk OUT transfers at a time (garbage, wrong
//! magic, wrong framing version, header length beyond the transfer, a record overrunning its bundle,
//! empty IP records, a truncated Hello, a Hello of an unsupported version, a 1 MiB transfer, short
//! transfers, a ZLP, a bounded flood of bad control messages, a bounded burst of valid bundles full
//! of junk records), each followed by one
//! valid empty *sentinel* bundle. The gadget handles transfers in order, so once its `rx_bundles`
//! counter (read over its control socket, `--control-socket`) has grown by the class's valid bundles
//! plus the sentinel, every transfer of the class has been processed: the tool then prints
//! `DELTA <class> name=+n ...` with every status counter that changed. The scenario holds the
//! expectations. Last, with rusb (nusb refuses IN lengths that are not a multiple of
//! wMaxPacketSize), bulk IN reads with odd buffer sizes (`ODDREAD` lines), then one normal read.
//!
//! `peer`: the valid host after the attack (the Rust twin of scenarios/gadget-usbpeer.py): sends the
//! Hello + LinkConfig bundle from `gadget-test-peer --dump-handshake` every second (it doubles as
//! keepalive), prints `HELLO` once the board's Hello arrives and `PING <seq>` for each ICMP echo
//! request to 10.47.0.1 it answers. With `--attack-when-up N --attack-trigger FILE` it also sends
//! every attack class once (junk burst of N) while the link is up, as soon as the board's Hello has
//! arrived and FILE exists (the scenario creates it after reading the counters), and prints
//! `ATTACKED`.
//!
//! The wire bytes are written here by hand from docs/protocol.md on purpose: this is an independent
//! reading of the spec, and most of what it sends is what shared-frame refuses to produce.
use clap::{Parser, Subcommand};
use nusb::MaybeFuture;
use nusb::descriptors::TransferType;
use nusb::transfer::{Buffer, Bulk, Direction, In, Out, TransferError};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

#[derive(Parser)]
/// Bad USB input for qbkit-gadget, then a valid peer.
struct Args {
    /// Device (hex VID:PID).
    #[arg(long, global = true, value_parser = qbkit_vm_usb_probe::parse_vid_pid, default_value = "1209:0001")]
    dev: (u16, u16),
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every class of bad input, with per-class counter deltas.
    Attack {
        /// The gadget's control socket (qbkit-gadget run --control-socket).
        #[arg(long)]
        control_socket: PathBuf,
        /// Valid-but-junk bundles in the burst (bounded).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        burst: u32,
    },
    /// A minimal valid host: handshake, keepalive, ping replies.
    Peer {
        /// Hello + LinkConfig bundle (gadget-test-peer --dump-handshake).
        #[arg(long)]
        handshake: PathBuf,
        /// Run time.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Once the board's Hello arrived and `--attack-trigger` exists, send every attack class
        /// once (with a junk burst of this many bundles) between keepalives; prints `ATTACKED`.
        #[arg(long, requires = "attack_trigger", value_parser = clap::value_parser!(u32).range(1..=100_000))]
        attack_when_up: Option<u32>,
        /// File whose existence starts the attack while up.
        #[arg(long)]
        attack_trigger: Option<PathBuf>,
    },
}

const TIMEOUT: Duration = Duration::from_secs(5);
/// Bundles in flight during the burst.
const BURST_DEPTH: usize = 8;

fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{s}");
    let _ = o.flush();
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match args.cmd {
        Cmd::Attack {
            control_socket,
            burst,
        } => attack(args.dev, &control_socket, burst),
        Cmd::Peer {
            handshake,
            secs,
            attack_when_up,
            attack_trigger,
        } => peer(
            args.dev,
            &handshake,
            secs,
            attack_when_up.zip(attack_trigger),
        ),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out(&format!("rogue-host: FAIL {e}"));
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------ device

struct Dev {
    iface: nusb::Interface,
    number: u8,
    ep_in: u8,
    ep_out: u8,
    mps: usize,
}

fn open((vid, pid): (u16, u16)) -> Result<Dev, String> {
    let t0 = Instant::now();
    let info = loop {
        let found = nusb::list_devices()
            .wait()
            .map_err(|e| format!("list devices: {e}"))?
            .find(|d| d.vendor_id() == vid && d.product_id() == pid);
        if let Some(d) = found {
            break d;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("device {vid:04x}:{pid:04x} not found in 30 s"));
        }
        thread::sleep(Duration::from_millis(100));
    };
    let dev = info.open().wait().map_err(|e| format!("open: {e}"))?;
    let cfg = dev
        .active_configuration()
        .map_err(|e| format!("configuration: {e}"))?;
    let mut found = None;
    for alt in cfg.interface_alt_settings() {
        if alt.class() != 0xff {
            continue;
        }
        let (mut ep_in, mut ep_out, mut mps) = (0, 0, 0);
        for ep in alt.endpoints() {
            if ep.transfer_type() != TransferType::Bulk {
                continue;
            }
            mps = ep.max_packet_size();
            match ep.direction() {
                Direction::In => ep_in = ep.address(),
                Direction::Out => ep_out = ep.address(),
            }
        }
        if ep_in != 0 && ep_out != 0 {
            found = Some((alt.interface_number(), ep_in, ep_out, mps));
        }
    }
    let (number, ep_in, ep_out, mps) = found.ok_or("no vendor interface with bulk IN and OUT")?;
    let iface = dev
        .detach_and_claim_interface(number)
        .wait()
        .map_err(|e| format!("claim interface {number}: {e}"))?;
    out(&format!(
        "CLAIMED interface {number} in={ep_in:#04x} out={ep_out:#04x} mps={mps}"
    ));
    Ok(Dev {
        iface,
        number,
        ep_in,
        ep_out,
        mps,
    })
}

// ------------------------------------------------------------------ wire bytes (docs/protocol.md)

const MAGIC: [u8; 2] = *b"QK";

fn header(magic: [u8; 2], version: u8, len: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&magic);
    b.extend_from_slice(&[version, 0]);
    b.extend_from_slice(&len.to_le_bytes());
    b
}

/// A bundle header claiming `len` bytes, then `body` as it is (for malformed bundles).
fn raw_bundle(magic: [u8; 2], version: u8, len: u32, body: &[u8]) -> Vec<u8> {
    let mut b = header(magic, version, len);
    b.extend_from_slice(body);
    b
}

/// A record: kind, channel, payload, padded to 4.
fn record(kind: u8, channel: u8, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![kind, channel];
    r.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    r.extend_from_slice(payload);
    r.resize(r.len().next_multiple_of(4), 0);
    r
}

/// A well-framed bundle of `records`.
fn bundle(records: &[Vec<u8>]) -> Vec<u8> {
    let len: usize = 8 + records.iter().map(Vec::len).sum::<usize>();
    let mut b = header(MAGIC, 1, len as u32);
    for r in records {
        b.extend_from_slice(r);
    }
    b
}

/// A Hello control payload.
fn hello(version: u8, role: u8, identity: &str) -> Vec<u8> {
    let mut h = vec![1];
    h.extend_from_slice(b"QBKN");
    h.extend_from_slice(&[version, role, 0, 0]);
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&65536u32.to_le_bytes());
    h.extend_from_slice(&16384u32.to_le_bytes());
    h.push(identity.len() as u8);
    h.extend_from_slice(identity.as_bytes());
    h
}

/// Deterministic junk (xorshift), so runs are reproducible.
fn junk(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

/// One class of bad input.
struct Class {
    name: &'static str,
    /// What it is, for the log.
    what: &'static str,
    transfers: Vec<Vec<u8>>,
    /// Transfers the gadget will see as well-framed bundles (they count `rx_bundles`).
    valid_bundles: u64,
}

#[allow(clippy::too_many_lines, reason = "one table of input classes")]
fn classes(burst: u32) -> Vec<Class> {
    let ip = |p: &[u8]| record(1, 0, p);
    let ctl = |p: &[u8]| record(2, 0, p);
    let mut garbage = junk(100, 1);
    garbage[0] = b'X'; // never "QK" by chance
    let mut overrun = header(MAGIC, 1, 32);
    overrun.extend_from_slice(&[1, 0, 200, 0]); // IP record of 200 bytes in a 32-byte bundle
    overrun.extend_from_slice(&junk(20, 2));
    let mut oversize = header(MAGIC, 1, 1 << 20);
    oversize.extend_from_slice(&junk((1 << 20) + 4, 3)); // 1 MiB + 12: not a multiple of any mps
    // One valid bundle carrying one of each junk record the spec says to skip and count.
    let mut junk_ip = junk(40, 4);
    junk_ip[0] = 0x00; // IP version 0: the TUN device refuses it
    let junk_bundle = bundle(&[
        ip(&junk_ip),
        record(1, 7, &junk(40, 5)), // IP on an unknown channel
        record(9, 0, &junk(12, 6)), // reserved record kind
        ctl(&[200, 1, 2, 3]),       // unknown control kind
        record(0, 0, &[0; 8]),      // kind 0: invalid, skipped
    ]);
    vec![
        Class {
            name: "garbage",
            what: "random bytes (100, 333, 1001)",
            transfers: vec![garbage, junk(333, 7), junk(1001, 8)],
            valid_bundles: 0,
        },
        Class {
            name: "bad_magic",
            what: "magic \"QX\"",
            transfers: vec![raw_bundle(*b"QX", 1, 16, &[0; 8])],
            valid_bundles: 0,
        },
        Class {
            name: "bad_version",
            what: "framing version 7",
            transfers: vec![raw_bundle(MAGIC, 7, 16, &[0; 8])],
            valid_bundles: 0,
        },
        Class {
            name: "len_gt_transfer",
            what: "header length 4096 in a 64-byte transfer",
            transfers: vec![raw_bundle(MAGIC, 1, 4096, &ip(&junk(52, 9)))],
            valid_bundles: 0,
        },
        Class {
            name: "len_unaligned",
            what: "header length 13 (not a multiple of 4) and 4 (below the header)",
            transfers: vec![
                raw_bundle(MAGIC, 1, 13, &[0; 5]),
                raw_bundle(MAGIC, 1, 4, &[0; 4]),
            ],
            valid_bundles: 0,
        },
        Class {
            name: "record_overrun",
            what: "a 200-byte record in a 32-byte bundle",
            transfers: vec![overrun],
            valid_bundles: 1,
        },
        Class {
            name: "empty_ip",
            what: "three zero-length IP records",
            transfers: vec![bundle(&[ip(&[]), ip(&[]), ip(&[])])],
            valid_bundles: 1,
        },
        Class {
            name: "truncated_hello",
            what: "Hello cut after 3 bytes, and after 12 bytes",
            transfers: vec![
                bundle(&[ctl(&[1, b'Q', b'B'])]),
                bundle(&[ctl(&hello(1, 2, "rogue")[..12])]),
            ],
            valid_bundles: 2,
        },
        Class {
            name: "hello_bad_version",
            what: "Hello with protocol version 0",
            transfers: vec![bundle(&[ctl(&hello(0, 2, "rogue-v0"))])],
            valid_bundles: 1,
        },
        Class {
            name: "hello_wrong_role",
            what: "Hello claiming to be a board",
            transfers: vec![bundle(&[ctl(&hello(1, 1, "rogue-board"))])],
            valid_bundles: 1,
        },
        Class {
            name: "oversize",
            what: "one 1 MiB + 12 byte transfer (header says 1 MiB)",
            transfers: vec![oversize],
            valid_bundles: 0,
        },
        Class {
            name: "short",
            what: "transfers of 1..=7 bytes",
            transfers: (1..=7).map(|n| MAGIC.repeat(4)[..n].to_vec()).collect(),
            valid_bundles: 0,
        },
        Class {
            name: "zlp",
            what: "a zero-length transfer",
            transfers: vec![Vec::new()],
            valid_bundles: 0,
        },
        Class {
            name: "bad_control_flood",
            what: "one truncated Hello in each of `burst / 5` bundles (log rate limiting)",
            transfers: vec![bundle(&[ctl(&[1, b'Q'])]); (burst / 5).max(1) as usize],
            valid_bundles: u64::from((burst / 5).max(1)),
        },
        Class {
            name: "junk_burst",
            what: "valid bundles of junk records (bad IP, unknown channel/kind/control, kind 0)",
            transfers: vec![junk_bundle; burst as usize],
            valid_bundles: u64::from(burst),
        },
    ]
}

// ------------------------------------------------------------------ control socket

fn counters(sock: &Path) -> Result<BTreeMap<String, u64>, String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    s.write_all(b"status\n")
        .map_err(|e| format!("status request: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("status reply: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("status JSON {line:?}: {e}"))?;
    let m = v["counters"]
        .as_object()
        .ok_or_else(|| format!("no counters in {line:?}"))?;
    Ok(m.iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect())
}

fn get(c: &BTreeMap<String, u64>, k: &str) -> u64 {
    c.get(k).copied().unwrap_or(0)
}

// ------------------------------------------------------------------ attack

/// Sends `transfers` on bulk OUT, up to `BURST_DEPTH` in flight; returns (ok, errors).
fn send_all(ep: &mut nusb::Endpoint<Bulk, Out>, transfers: &[Vec<u8>]) -> (usize, Vec<String>) {
    let (mut ok, mut errors) = (0, Vec::new());
    let mut reap = |ep: &mut nusb::Endpoint<Bulk, Out>| {
        let Some(c) = ep.wait_next_complete(TIMEOUT) else {
            ep.cancel_all();
            errors.push("timeout".into());
            return;
        };
        match c.status {
            Ok(()) => ok += 1,
            Err(e) => errors.push(format!("{e:?}")),
        }
    };
    for t in transfers {
        if ep.pending() >= BURST_DEPTH {
            reap(ep);
        }
        let mut b = Buffer::new(t.len());
        b.extend_from_slice(t);
        ep.submit(b);
    }
    while ep.pending() > 0 {
        reap(ep);
    }
    (ok, errors)
}

fn attack(id: (u16, u16), sock: &Path, burst: u32) -> Result<(), String> {
    let dev = open(id)?;
    let mut ep = dev
        .iface
        .endpoint::<Bulk, Out>(dev.ep_out)
        .map_err(|e| format!("bulk OUT: {e}"))?;
    let sentinel = bundle(&[]);
    let mut before = counters(sock)?;
    out(&format!("BASELINE {before:?}"));
    for class in classes(burst) {
        let t0 = Instant::now();
        let mut transfers = class.transfers;
        transfers.push(sentinel.clone());
        let (ok, errors) = send_all(&mut ep, &transfers);
        out(&format!(
            "SENT {} transfers={} ok={ok} errors={} {}({})",
            class.name,
            transfers.len(),
            errors.len(),
            errors.first().map_or("", |_| "first_error="),
            errors.first().map_or(class.what, String::as_str),
        ));
        // Sync: the sentinel (and the class's valid bundles) reached the pump.
        let want = get(&before, "rx_bundles") + class.valid_bundles + 1;
        let after = loop {
            let c = counters(sock)?;
            if get(&c, "rx_bundles") >= want {
                break c;
            }
            if t0.elapsed() > Duration::from_mins(1) {
                return Err(format!(
                    "{}: gadget did not process the sentinel in 60 s (rx_bundles {} < {want})",
                    class.name,
                    get(&c, "rx_bundles")
                ));
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut line = format!("DELTA {}", class.name);
        for (k, v) in &after {
            let d = v.saturating_sub(get(&before, k));
            if d > 0 {
                let _ = write!(line, " {k}=+{d}");
            }
        }
        let _ = write!(line, " ms={}", t0.elapsed().as_millis());
        out(&line);
        before = after;
    }
    drop(ep);
    let number = dev.number;
    dev.iface
        .release()
        .wait()
        .map_err(|e| format!("release: {e}"))?;
    odd_reads(id, number, dev.ep_in, dev.mps)
}

/// Bulk IN reads with buffer sizes that are not multiples of wMaxPacketSize, through libusb.
fn odd_reads((vid, pid): (u16, u16), number: u8, ep_in: u8, mps: usize) -> Result<(), String> {
    let h = rusb::open_device_with_vid_pid(vid, pid).ok_or("libusb: cannot open the device")?;
    h.claim_interface(number)
        .map_err(|e| format!("libusb claim: {e}"))?;
    for size in [1, 3, 7, 13, 43, 100, mps - 1, mps + 1, 2 * mps - 3, 4097] {
        let mut buf = vec![0u8; size];
        let r = h.read_bulk(ep_in, &mut buf, Duration::from_secs(2));
        out(&format!(
            "ODDREAD size={size} {}",
            match r {
                Ok(n) => format!("ok len={n}"),
                Err(e) => format!("err={e:?}"),
            }
        ));
    }
    // A normal read afterwards gets a whole, well-formed bundle (the board's Hello retries).
    let mut buf = vec![0u8; 65536];
    let t0 = Instant::now();
    loop {
        match h.read_bulk(ep_in, &mut buf, Duration::from_secs(2)) {
            Ok(n) if n >= 8 && buf[..2] == MAGIC => {
                let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                out(&format!("INREAD ok len={n} bundle_len={len}"));
                break;
            }
            r if t0.elapsed() > Duration::from_secs(20) => {
                return Err(format!(
                    "no well-formed bundle on bulk IN after the odd reads: {r:?}"
                ));
            }
            _ => {}
        }
    }
    let _ = h.release_interface(number);
    Ok(())
}

// ------------------------------------------------------------------ peer

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The echo reply for an IPv4 ICMP echo request to 10.47.0.1, with its sequence number.
fn echo_reply(p: &[u8]) -> Option<(Vec<u8>, u16)> {
    if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 1 || p[16..20] != [10, 47, 0, 1] {
        return None;
    }
    let ihl = usize::from(p[0] & 15) * 4;
    if p.len() < ihl + 8 || p[ihl] != 8 {
        return None;
    }
    let mut r = p.to_vec();
    r[12..16].copy_from_slice(&p[16..20]);
    r[16..20].copy_from_slice(&p[12..16]);
    r[10..12].fill(0);
    let c = csum(&r[..ihl]);
    r[10..12].copy_from_slice(&c.to_be_bytes());
    r[ihl] = 0;
    r[ihl + 2..ihl + 4].fill(0);
    let c = csum(&r[ihl..]);
    r[ihl + 2..ihl + 4].copy_from_slice(&c.to_be_bytes());
    Some((r, u16::from_be_bytes([p[ihl + 6], p[ihl + 7]])))
}

/// (kind, payload) of each record of a received bundle; stops at the first malformed one.
fn records(b: &[u8]) -> Vec<(u8, &[u8])> {
    let mut v = Vec::new();
    if b.len() < 8 || b[..2] != MAGIC {
        return v;
    }
    let total = (u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize).min(b.len());
    let mut off = 8;
    while off + 4 <= total {
        let len = usize::from(u16::from_le_bytes([b[off + 2], b[off + 3]]));
        let Some(p) = b.get(off + 4..off + 4 + len) else {
            break;
        };
        v.push((b[off], p));
        off += (4 + len).next_multiple_of(4);
    }
    v
}

fn peer(
    id: (u16, u16),
    handshake: &Path,
    secs: u64,
    mut attack: Option<(u32, PathBuf)>,
) -> Result<(), String> {
    let hs = std::fs::read(handshake).map_err(|e| format!("{}: {e}", handshake.display()))?;
    let dev = open(id)?;
    let mut ep_out = dev
        .iface
        .endpoint::<Bulk, Out>(dev.ep_out)
        .map_err(|e| format!("bulk OUT: {e}"))?;
    let mut ep_in = dev
        .iface
        .endpoint::<Bulk, In>(dev.ep_in)
        .map_err(|e| format!("bulk IN: {e}"))?;
    let mps = dev.mps;
    let send = |ep_out: &mut nusb::Endpoint<Bulk, Out>, b: &[u8]| -> Result<(), String> {
        let mut buf = Buffer::new(b.len() + 4);
        buf.extend_from_slice(b);
        if b.len().is_multiple_of(mps) {
            buf.extend_from_slice(&[0; 4]); // the USB pad rule
        }
        ep_out
            .transfer_blocking(buf, TIMEOUT)
            .status
            .map_err(|e| format!("bulk OUT: {e:?}"))
    };
    for _ in 0..2 {
        ep_in.submit(ep_in.allocate(65536));
    }
    let end = Instant::now() + Duration::from_secs(secs);
    let mut next_ka = Instant::now();
    let mut hello = false;
    while Instant::now() < end {
        if hello && let Some((burst, trigger)) = attack.take_if(|(_, t)| t.exists()) {
            out(&format!("ATTACK trigger {}", trigger.display()));
            let transfers: Vec<Vec<u8>> = classes(burst)
                .into_iter()
                .flat_map(|c| c.transfers)
                .collect();
            let (ok, errors) = send_all(&mut ep_out, &transfers);
            out(&format!(
                "ATTACKED transfers={} ok={ok} errors={} {}",
                transfers.len(),
                errors.len(),
                errors.first().map_or("", String::as_str)
            ));
            next_ka = Instant::now();
        }
        if Instant::now() >= next_ka {
            send(&mut ep_out, &hs)?;
            next_ka = Instant::now() + Duration::from_secs(1);
        }
        let Some(c) = ep_in.wait_next_complete(Duration::from_millis(200)) else {
            continue;
        };
        match c.status {
            Ok(()) => {}
            Err(TransferError::Disconnected) => return Err("device gone".into()),
            Err(e) => out(&format!("IN error {e:?}")),
        }
        let mut replies = Vec::new();
        for (kind, p) in records(&c.buffer[..c.actual_len]) {
            if kind == 2 && p.first() == Some(&1) && !hello {
                hello = true;
                out("HELLO");
            }
            if kind == 1
                && let Some((r, seq)) = echo_reply(p)
            {
                replies.push(record(1, 0, &r));
                out(&format!("PING {seq}"));
            }
        }
        let mut buf = c.buffer;
        buf.clear();
        ep_in.submit(buf);
        if !replies.is_empty() {
            send(&mut ep_out, &bundle(&replies))?;
        }
    }
    Ok(())
}
