//! DNS forwarding across every upstream resolver, with failover.
//!
//! # Theory of operation
//!
//! The gateway's port 53 (UDP and TCP) forwards to the upstream resolvers in
//! [`NatConfig::dns_servers`](crate::NatConfig::dns_servers). A new DNS flow starts at the
//! *preferred* resolver: the one that answered last (the first one until then). Each DNS flow
//! carries a [`Failover`] that remembers the queries sent to its current resolver and not
//! answered yet. When the oldest has waited `dns_failover_timeout` (1 s), or the resolver
//! answered with an ICMP error, or (TCP) its connect failed or did not finish in that time, the
//! flow moves to the next resolver it has not tried, and the pending queries are sent again
//! there. The resolver that answers becomes the preferred one, so after one failover every new
//! query goes straight to a working resolver.
//!
//! Moving a flow gives it a new [`FlowId`](crate::FlowId) (`UdpClose`/`UdpOpen` or
//! `TcpClose`/`TcpConnect` for the driver): ids are never reused, so late events of the old
//! socket are stale and ignored. The board's side of the flow does not change: answers still
//! come from gateway:53.
//!
//! When every resolver was tried in one round, the pending queries are given up (the board's
//! resolver retries; its retry starts a new round). Replacing the resolver list
//! ([`Nat::set_dns_servers`](crate::Nat::set_dns_servers), e.g. after resolv.conf changed) moves
//! every UDP DNS flow whose resolver is gone to the new preferred one.
//!
//! # Limits
//!
//! At most [`MAX_PENDING`] queries of at most [`MAX_QUERY_LEN`] bytes are kept per flow (the
//! oldest is forgotten first; larger queries are forwarded but not retried), so a flow holds at
//! most 8 × 1.5 KiB for resends, and only for the second they wait.

use std::collections::VecDeque;

use core::net::SocketAddr;

use smoltcp::time::{Duration, Instant};

use crate::flow::{Flow, FlowKind};
use crate::{FlowId, Nat, NatEvent};

/// Queries remembered per flow for a resend.
pub(crate) const MAX_PENDING: usize = 8;
/// Largest query remembered for a resend (a DNS query is rarely above 300 bytes).
pub(crate) const MAX_QUERY_LEN: usize = 1500;

/// One query waiting for its answer.
#[derive(Debug, Clone)]
struct Pending {
    id: u16,
    payload: Vec<u8>,
    sent: Instant,
}

/// Failover state of one DNS flow (a UDP pair or a TCP connection to gateway:53).
#[derive(Debug, Clone)]
pub(crate) struct Failover {
    /// Resolvers used in this round, in order; the last is the current one.
    tried: Vec<SocketAddr>,
    /// UDP queries sent to the current resolver and not answered.
    pending: VecDeque<Pending>,
    /// TCP: when the connect started (`None` once connected, and for UDP).
    connecting_since: Option<Instant>,
}

impl Failover {
    /// A flow that starts at `server`.
    pub(crate) fn new(server: SocketAddr) -> Self {
        Self {
            tried: vec![server],
            pending: VecDeque::new(),
            connecting_since: None,
        }
    }

    /// A TCP flow whose connect to `server` starts now.
    pub(crate) fn connecting(server: SocketAddr, now: Instant) -> Self {
        Self {
            connecting_since: Some(now),
            ..Self::new(server)
        }
    }

    /// The resolver in use.
    pub(crate) fn current(&self) -> SocketAddr {
        self.tried[self.tried.len() - 1]
    }

    /// A UDP query was sent to the current resolver at `now`.
    pub(crate) fn sent(&mut self, now: Instant, payload: &[u8]) {
        if self.pending.is_empty() && self.tried.len() > 1 {
            // A new round: every resolver may be tried again, starting from this one.
            let cur = self.current();
            self.tried.clear();
            self.tried.push(cur);
        }
        if payload.len() < 2 || payload.len() > MAX_QUERY_LEN {
            return;
        }
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            id: u16::from_be_bytes([payload[0], payload[1]]),
            payload: payload.to_vec(),
            sent: now,
        });
    }

    /// An answer came from the current resolver: its query is no longer pending.
    pub(crate) fn answered(&mut self, payload: &[u8]) {
        if payload.len() >= 2 {
            let id = u16::from_be_bytes([payload[0], payload[1]]);
            self.pending.retain(|p| p.id != id);
        }
    }

    /// The TCP connect to the current resolver succeeded.
    pub(crate) fn connected(&mut self) {
        self.connecting_since = None;
    }

    /// When the current resolver has waited too long (`None`: nothing is waiting).
    pub(crate) fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let oldest = self.pending.front().map(|p| p.sent);
        match (oldest, self.connecting_since) {
            (Some(a), Some(b)) => Some(a.min(b) + timeout),
            (a, b) => a.or(b).map(|t| t + timeout),
        }
    }

    /// The resolver to try after the current one: the next in `servers` (cyclically) not tried
    /// in this round, or `None` when all were.
    pub(crate) fn next_server(
        &self,
        servers: &[SocketAddr],
        preferred: usize,
    ) -> Option<SocketAddr> {
        if servers.is_empty() {
            return None;
        }
        let start = servers
            .iter()
            .position(|s| *s == self.current())
            .map_or(preferred, |i| i + 1);
        (0..servers.len())
            .map(|k| servers[(start + k) % servers.len()])
            .find(|s| !self.tried.contains(s))
    }

    /// Moves to `server` at `now`; returns the pending queries to send there.
    pub(crate) fn move_to(&mut self, server: SocketAddr, now: Instant) -> Vec<Vec<u8>> {
        self.tried.push(server);
        if self.connecting_since.is_some() {
            self.connecting_since = Some(now);
        }
        self.pending
            .iter_mut()
            .map(|p| {
                p.sent = now;
                p.payload.clone()
            })
            .collect()
    }

    /// Starts over at `server` (the resolver list changed): the round restarts there.
    pub(crate) fn restart_at(&mut self, server: SocketAddr, now: Instant) -> Vec<Vec<u8>> {
        self.tried.clear();
        self.move_to(server, now)
    }

    /// Every resolver failed this round: forget the pending queries (the board retries).
    pub(crate) fn give_up(&mut self) {
        self.pending.clear();
        self.connecting_since = None;
    }
}

/// Index of `server` in `servers` (the new preferred resolver after it answered).
pub(crate) fn index_of(servers: &[SocketAddr], server: SocketAddr) -> Option<usize> {
    servers.iter().position(|s| *s == server)
}

impl Flow {
    /// The failover state of a DNS flow.
    fn dns(&self) -> Option<&Failover> {
        match &self.kind {
            FlowKind::Udp(u) => u.dns.as_deref(),
            FlowKind::Tcp(t) => t.dns.as_deref(),
            FlowKind::Icmp => None,
        }
    }

    fn dns_mut(&mut self) -> Option<&mut Failover> {
        match &mut self.kind {
            FlowKind::Udp(u) => u.dns.as_deref_mut(),
            FlowKind::Tcp(t) => t.dns.as_deref_mut(),
            FlowKind::Icmp => None,
        }
    }
}

impl Nat {
    /// A DNS query went out on UDP flow `id`: it waits for its answer from now on.
    pub(crate) fn dns_sent(&mut self, id: FlowId, payload: &[u8]) {
        let now = self.now;
        if let Some(f) = self.flows.get_mut(id).and_then(Flow::dns_mut) {
            f.sent(now, payload);
        }
        self.arm_dns_timer(id);
    }

    /// A TCP connect to a resolver started on flow `id`.
    pub(crate) fn dns_connecting(&mut self, id: FlowId) {
        self.arm_dns_timer(id);
    }

    /// Makes the DNS timer fire no later than flow `id`'s failover deadline.
    fn arm_dns_timer(&mut self, id: FlowId) {
        let timeout = self.cfg.dns_failover_timeout;
        let deadline = self
            .flows
            .get(id)
            .and_then(Flow::dns)
            .and_then(|f| f.deadline(timeout));
        if let Some(d) = deadline {
            self.dns_timer = Some(self.dns_timer.map_or(d, |t| t.min(d)));
        }
    }

    /// The flow's resolver answered (`payload`, UDP) or accepted the connect (`None`, TCP): it
    /// becomes the preferred resolver for new flows.
    pub(crate) fn dns_answered(&mut self, id: FlowId, payload: Option<&[u8]>) {
        let Some(f) = self.flows.get_mut(id).and_then(Flow::dns_mut) else {
            return;
        };
        match payload {
            Some(p) => f.answered(p),
            None => f.connected(),
        }
        let server = f.current();
        if let Some(i) = index_of(&self.cfg.dns_servers, server)
            && i != self.dns_preferred
        {
            self.dns_preferred = i;
            if self.log.allow(self.now, &mut self.counters) {
                tracing::info!(%server, "nat: DNS resolver answers; new queries go to it first");
            }
        }
    }

    /// Moves DNS flow `id` to the next resolver it has not tried. Returns false (and gives up
    /// its pending queries) when every resolver was tried, or for a flow that is not DNS: the
    /// caller then reports the failure to the board as usual. `close_old`: the driver still
    /// holds the old TCP socket (a connect that did not finish in time).
    pub(crate) fn dns_fail_over(&mut self, id: FlowId, why: &'static str, close_old: bool) -> bool {
        let (now, preferred) = (self.now, self.dns_preferred);
        let Some(f) = self.flows.get_mut(id).and_then(Flow::dns_mut) else {
            return false;
        };
        let from = f.current();
        let Some(next) = f.next_server(&self.cfg.dns_servers, preferred) else {
            f.give_up();
            self.counters.dns_unanswered += 1;
            if self.log.allow(now, &mut self.counters) {
                tracing::warn!(last = %from, why, "nat: no DNS resolver answered");
            }
            return false;
        };
        let resend = f.move_to(next, now);
        self.counters.dns_failovers += 1;
        if self.log.allow(now, &mut self.counters) {
            tracing::info!(%from, to = %next, why, "nat: DNS resolver failed; trying the next");
        }
        self.dns_move(id, next, resend, close_old)
    }

    /// Gives flow `id` a new id connected to `server` and tells the driver: the old socket
    /// closes, a new one opens, the pending queries go out on it.
    fn dns_move(
        &mut self,
        id: FlowId,
        server: SocketAddr,
        resend: Vec<Vec<u8>>,
        close_old: bool,
    ) -> bool {
        let Some(new) = self.flows.rekey(id, server, self.now) else {
            return false;
        };
        let Some(flow) = self.flows.get(new) else {
            return false;
        };
        let (src, _) = flow.key.endpoints();
        if matches!(flow.kind, FlowKind::Udp(_)) {
            self.events.push_back(NatEvent::UdpClose { flow: id });
            self.events.push_back(NatEvent::UdpOpen {
                flow: new,
                src,
                dst: server,
            });
            for payload in resend {
                let len = payload.len();
                self.push_datagram_event(NatEvent::UdpSend { flow: new, payload }, len);
            }
        } else {
            if close_old {
                self.events.push_back(NatEvent::TcpClose {
                    flow: id,
                    reset: true,
                });
            }
            self.events.push_back(NatEvent::TcpConnect {
                flow: new,
                src,
                dst: server,
            });
        }
        self.arm_dns_timer(new);
        true
    }

    /// The DNS timer fired: every flow whose resolver waited too long moves on.
    pub(crate) fn dns_timeouts(&mut self) {
        let (now, timeout) = (self.now, self.cfg.dns_failover_timeout);
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for f in self.flows.iter() {
            if let Some(d) = f.dns().and_then(|s| s.deadline(timeout)) {
                if d <= now {
                    due.push((f.id, matches!(f.kind, FlowKind::Tcp(_))));
                } else {
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
            }
        }
        self.dns_timer = next;
        for (id, tcp) in due {
            self.dns_fail_over(id, "no answer in time", tcp);
        }
    }

    /// The resolver list changed: UDP DNS flows whose resolver is no longer listed move to the
    /// first one, with their pending queries.
    pub(crate) fn dns_servers_replaced(&mut self) {
        let Some(&first) = self.cfg.dns_servers.first() else {
            return;
        };
        let now = self.now;
        let gone: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|f| matches!(f.kind, FlowKind::Udp(_)))
            .filter(|f| {
                f.dns()
                    .is_some_and(|d| !self.cfg.dns_servers.contains(&d.current()))
            })
            .map(|f| f.id)
            .collect();
        for id in gone {
            let Some(f) = self.flows.get_mut(id).and_then(Flow::dns_mut) else {
                continue;
            };
            let resend = f.restart_at(first, now);
            self.dns_move(id, first, resend, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn ms(v: i64) -> Instant {
        Instant::from_millis(v)
    }

    fn servers() -> Vec<SocketAddr> {
        ["192.0.2.1:53", "192.0.2.2:53", "[2001:db8::3]:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    fn query(id: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        q
    }

    #[test]
    fn no_deadline_until_a_query_waits_and_none_after_its_answer() {
        let s = servers();
        let mut f = Failover::new(s[0]);
        assert_eq!(f.deadline(T), None);
        f.sent(ms(100), &query(7));
        f.sent(ms(400), &query(8));
        assert_eq!(
            f.deadline(T),
            Some(ms(1100)),
            "the oldest query sets the deadline"
        );
        f.answered(&query(7));
        assert_eq!(f.deadline(T), Some(ms(1400)));
        f.answered(&query(99));
        assert_eq!(
            f.deadline(T),
            Some(ms(1400)),
            "an unknown id changes nothing"
        );
        f.answered(&query(8));
        assert_eq!(f.deadline(T), None);
    }

    #[test]
    fn fails_over_through_every_resolver_once_then_gives_up() {
        let s = servers();
        let mut f = Failover::new(s[0]);
        f.sent(ms(0), &query(1));
        f.sent(ms(10), &query(2));
        // 1 s later the first resolver has not answered: the second gets both queries.
        let next = f.next_server(&s, 0).unwrap();
        assert_eq!(next, s[1]);
        let resend = f.move_to(next, ms(1000));
        assert_eq!(resend, vec![query(1), query(2)]);
        assert_eq!(f.current(), s[1]);
        assert_eq!(
            f.deadline(T),
            Some(ms(2000)),
            "the new resolver gets its own second"
        );
        let next = f.next_server(&s, 0).unwrap();
        assert_eq!(next, s[2]);
        f.move_to(next, ms(2000));
        assert_eq!(
            f.next_server(&s, 0),
            None,
            "every resolver tried this round"
        );
        f.give_up();
        assert_eq!(f.deadline(T), None);
        // The board's retry starts a new round from the current resolver.
        f.sent(ms(5000), &query(3));
        assert_eq!(f.next_server(&s, 0), Some(s[0]));
    }

    #[test]
    fn starting_from_the_preferred_resolver_wraps_around() {
        let s = servers();
        let mut f = Failover::new(s[2]);
        f.sent(ms(0), &query(1));
        assert_eq!(f.next_server(&s, 2), Some(s[0]));
        f.move_to(s[0], ms(1000));
        assert_eq!(f.next_server(&s, 2), Some(s[1]));
        // A current resolver no longer listed: start at the preferred one.
        let g = Failover::new("198.51.100.9:53".parse().unwrap());
        assert_eq!(g.next_server(&s, 1), Some(s[1]));
        assert_eq!(g.next_server(&[], 0), None);
        assert_eq!(index_of(&s, s[2]), Some(2));
    }

    #[test]
    fn tcp_connect_deadline_and_restart() {
        let s = servers();
        let mut f = Failover::connecting(s[0], ms(0));
        assert_eq!(f.deadline(T), Some(ms(1000)));
        assert!(
            f.move_to(s[1], ms(1000)).is_empty(),
            "TCP has no datagrams to resend"
        );
        assert_eq!(f.deadline(T), Some(ms(2000)));
        f.connected();
        assert_eq!(f.deadline(T), None);
        let mut u = Failover::new(s[1]);
        u.sent(ms(0), &query(4));
        assert_eq!(u.restart_at(s[0], ms(300)), vec![query(4)]);
        assert_eq!(u.current(), s[0]);
        assert_eq!(
            u.next_server(&s, 0),
            Some(s[1]),
            "a restarted round may try the old one"
        );
    }

    #[test]
    fn bounded_and_short_or_huge_queries_are_not_kept() {
        let s = servers();
        let mut f = Failover::new(s[0]);
        f.sent(ms(0), &[1]);
        f.sent(ms(0), &vec![0; MAX_QUERY_LEN + 1]);
        assert_eq!(f.deadline(T), None);
        for i in 0..(MAX_PENDING as u16 + 3) {
            f.sent(ms(i64::from(i)), &query(i));
        }
        let resend = f.move_to(s[1], ms(100));
        assert_eq!(resend.len(), MAX_PENDING);
        assert_eq!(resend[0], query(3), "the oldest are forgotten first");
    }
}
