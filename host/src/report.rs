//! Reporting: what the running engine shows of itself, computed from the sans-IO core (which
//! owns the counters) and a few facts the driver knows (the link's description, the forwards).
//! Pure functions; the driver decides when to print and publish. The `status` snapshot for the
//! control socket is built in [`crate::status`] from the same sources.
//!
//! - [`HostLine`]: the one-line summary `run` redraws on a terminal every second from the boards'
//!   summaries (the board's state, or how many boards are up; rates both ways since the last
//!   line; flows).
//! - [`Summary`]: what front ends (the tray) show, published on a `watch` channel only when it
//!   changed ([`publish`]).

use std::net::Ipv4Addr;

use tokio::sync::watch;

use crate::core::Core;

/// What a front end shows of the running engine (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// The attached link's description (`None`: no board / no peer).
    pub link: Option<String>,
    /// The session is up: the board has its configuration and internet.
    pub session_up: bool,
    /// The board's identity from its Hello, while the session is up.
    pub peer: Option<String>,
    /// The board's IPv4 address on the link, while the session is up.
    pub board_ipv4: Option<Ipv4Addr>,
    /// Session bytes received from the board so far.
    pub rx_bytes: u64,
    /// Session bytes sent to the board so far.
    pub tx_bytes: u64,
    /// Open NAT flows.
    pub flows: usize,
    /// Why the handshake on the current link failed (version mismatch, wrong role); cleared
    /// when the session comes up or the link goes away.
    pub error: Option<String>,
    /// One line per port forward (`ssh 127.0.0.1:2222 → tcp:22`).
    pub forwards: Vec<String>,
}

/// Session byte totals (rx, tx) and time (µs) at the host's last live line.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostLine {
    prev: (u64, u64, u64),
}

impl HostLine {
    /// The host's line at `now` (µs) from its boards' summaries: the board's state (with one
    /// board) or how many boards have a session, rates both ways since the last line (totals),
    /// flows.
    #[allow(clippy::cast_precision_loss, reason = "display only")]
    pub fn render(&mut self, now: u64, boards: &[Summary]) -> String {
        let rx: u64 = boards.iter().map(|b| b.rx_bytes).sum();
        let tx: u64 = boards.iter().map(|b| b.tx_bytes).sum();
        let flows: usize = boards.iter().map(|b| b.flows).sum();
        let (rx0, tx0, t0) = self.prev;
        self.prev = (rx, tx, now);
        let secs = now.saturating_sub(t0).max(1) as f64 / 1e6;
        let mbit = |b: u64| b as f64 * 8.0 / secs / 1e6;
        let state = match boards {
            [one] => match &one.link {
                Some(d) if one.session_up => d.clone(),
                Some(_) => "link up, no session yet".to_owned(),
                None => "waiting for the board".to_owned(),
            },
            _ => format!(
                "{} boards, {} up",
                boards.len(),
                boards.iter().filter(|b| b.session_up).count()
            ),
        };
        format!(
            "\r\x1b[K{state} | board→net {:.1} Mbit/s | net→board {:.1} Mbit/s | {flows} flows",
            mbit(rx.saturating_sub(rx0)),
            mbit(tx.saturating_sub(tx0)),
        )
    }
}

/// The [`Summary`] of the core with the attached link's description (`None`: no link), the
/// board's address and one line per forward.
pub fn summary(
    core: &Core,
    link: Option<&str>,
    board_ipv4: Ipv4Addr,
    forwards: Vec<String>,
) -> Summary {
    let up = core.is_up();
    let c = core.session().counters();
    Summary {
        link: link.map(str::to_owned),
        session_up: up,
        peer: core.peer().map(str::to_owned),
        board_ipv4: up.then_some(board_ipv4),
        rx_bytes: c.rx_bytes,
        tx_bytes: c.tx_bytes,
        flows: core.nat().flow_count(),
        error: core.handshake_error().map(str::to_owned),
        forwards,
    }
}

/// Publishes `next` when it differs from what `tx` holds (no wake-up for an idle link).
pub fn publish(tx: &watch::Sender<Summary>, next: Summary) {
    tx.send_if_modified(|s| {
        let changed = *s != next;
        if changed {
            *s = next;
        }
        changed
    });
}

#[cfg(test)]
mod tests {
    use qbkit_nat::NatConfig;
    use shared_frame::Framing;

    use super::*;
    use crate::core::CoreConfig;

    fn core() -> Core {
        let cfg = CoreConfig {
            nat: NatConfig::default(),
            max_bundle: shared_frame::DEFAULT_MAX_BUNDLE,
            identity: "qbkit-host test".into(),
        };
        Core::new(cfg, 0).unwrap()
    }

    #[test]
    fn live_line_says_what_the_boards_are_doing() {
        let mut c = core();
        let mut prev = HostLine::default();
        let waiting = summary(&c, None, Ipv4Addr::new(10, 47, 0, 2), vec![]);
        let line = prev.render(1_000_000, std::slice::from_ref(&waiting));
        assert!(
            line.starts_with("\r\x1b[Kwaiting for the board |"),
            "{line:?}"
        );
        assert!(line.ends_with("| 0 flows"), "{line:?}");
        c.handle_link_up(1_000_000, Framing::Stream);
        let linked = summary(
            &c,
            Some("tcp 127.0.0.1:1"),
            Ipv4Addr::new(10, 47, 0, 2),
            vec![],
        );
        let line = prev.render(2_000_000, std::slice::from_ref(&linked));
        assert!(line.contains("link up, no session yet"), "{line:?}");
        let mut up = linked.clone();
        up.session_up = true;
        up.rx_bytes = 1_000_000;
        let line = prev.render(3_000_000, &[waiting, up]);
        assert!(
            line.contains("2 boards, 1 up | board→net 8.0 Mbit/s"),
            "{line:?}"
        );
    }

    #[test]
    fn summary_without_a_session_has_no_board() {
        let mut c = core();
        c.handle_link_up(0, Framing::Stream);
        let s = summary(
            &c,
            Some("usb 3-1"),
            Ipv4Addr::new(10, 47, 0, 2),
            vec!["f".into()],
        );
        assert_eq!(s.link.as_deref(), Some("usb 3-1"));
        assert!(!s.session_up);
        assert_eq!(
            (s.peer.as_deref(), s.board_ipv4),
            (None, None),
            "only while the session is up"
        );
        assert_eq!(s.forwards, ["f"]);
        let (tx, rx) = watch::channel(Summary::default());
        publish(&tx, s.clone());
        assert!(rx.has_changed().unwrap());
        let rx2 = tx.subscribe();
        publish(&tx, s);
        assert!(!rx2.has_changed().unwrap(), "the same summary wakes nobody");
    }
}
