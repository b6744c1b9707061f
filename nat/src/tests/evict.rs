//! The flow table's eviction order (a lazy heap per class) against a walk of every flow, through
//! a long scripted run of inserts, activity, removals and rekeys.

use core::net::SocketAddr;

use smoltcp::time::{Duration, Instant};

use crate::FlowId;
use crate::flow::{FlowKey, FlowKind, FlowTable, SynCopy, TcpFlow, TcpPhase, UdpFlow};

/// The old definition: the longest idle of the flows idle at least `min_idle`, UDP/ICMP first.
fn by_walk(t: &FlowTable, now: Instant, min_idle: Duration) -> Option<(bool, Instant)> {
    t.iter()
        .filter(|f| now - f.last_active >= min_idle)
        .map(|f| (matches!(f.kind, FlowKind::Tcp(_)), f.last_active))
        .min()
}

#[test]
fn eviction_candidate_matches_a_walk_of_every_flow() {
    let mut t = FlowTable::default();
    let mut now = Instant::from_secs(1000);
    let min_idle = Duration::from_secs(10);
    let mut ids: Vec<FlowId> = Vec::new();
    let mut rng = 0x2545_f491_u32;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    let (mut evicted, mut touched) = (0, 0);
    for step in 0..20_000u32 {
        now += Duration::from_millis(u64::from(next() % 200));
        let r = next() % 100;
        if r < 30 || ids.is_empty() {
            let port = u16::try_from(step % 60_000).expect("port") + 1;
            let src: SocketAddr = ([10, 47, 0, 2], port).into();
            let dst: SocketAddr = ([198, 51, 100, 7], 80).into();
            let (key, kind) = if next() % 2 == 0 {
                let syn = SynCopy {
                    src,
                    dst,
                    seq: 1,
                    window_len: 65535,
                    window_scale: None,
                    max_seg_size: None,
                    sack_permitted: false,
                    ttl: 64,
                };
                (
                    FlowKey::Tcp { src, dst },
                    FlowKind::Tcp(TcpFlow::new(TcpPhase::Connecting { syn }, false)),
                )
            } else {
                (
                    FlowKey::Udp { src, dst },
                    FlowKind::Udp(UdpFlow {
                        replied: false,
                        dns: None,
                        inbound: false,
                    }),
                )
            };
            if t.id_of(&key).is_none() {
                ids.push(t.insert(key, dst, now, kind));
            }
        } else if r < 75 {
            let id = ids[next() as usize % ids.len()];
            if let Some(f) = t.get_mut(id) {
                f.last_active = now;
                touched += 1;
            }
        } else if r < 80 {
            let k = next() as usize % ids.len();
            if let Some(new) = t.rekey(ids[k], ([198, 51, 100, 8], 53).into(), now) {
                ids[k] = new;
            }
        } else if r < 90 {
            let id = ids.swap_remove(next() as usize % ids.len());
            t.remove(id);
        } else {
            let want = by_walk(&t, now, min_idle);
            let got = t.eviction_candidate(now, min_idle).map(|id| {
                let f = t.get(id).expect("candidate exists");
                (matches!(f.kind, FlowKind::Tcp(_)), f.last_active)
            });
            assert_eq!(got, want, "step {step}");
            // Evict it, as make_room does.
            let id = t.eviction_candidate(now, min_idle);
            if let Some(pos) = id.and_then(|id| ids.iter().position(|&x| x == id)) {
                t.remove(ids.swap_remove(pos));
                evicted += 1;
            }
        }
    }
    assert!(
        evicted > 100 && touched > 1000,
        "{evicted} evicted, {touched} touched"
    );
}

fn udp_flow(t: &mut FlowTable, n: u32, now: Instant) -> FlowId {
    let src: SocketAddr = ([10, 47, 0, 2], u16::try_from(n % 60_000).expect("port") + 1).into();
    let dst: SocketAddr = (
        [198, 51, 100, 7],
        53 + u16::try_from(n / 60_000).expect("dst"),
    )
        .into();
    let kind = FlowKind::Udp(UdpFlow {
        replied: false,
        dns: None,
        inbound: false,
    });
    t.insert(FlowKey::Udp { src, dst }, dst, now, kind)
}

/// A daemon that made a million short connections and never had to evict one must not hold a
/// million entries: the eviction heap used to keep one per flow ever opened until an eviction
/// popped them.
#[test]
fn the_table_stays_the_size_of_its_flows_through_churn_without_evictions() {
    let mut t = FlowTable::default();
    let mut now = Instant::from_secs(1000);
    let mut open = std::collections::VecDeque::new();
    let mut peak = 0;
    for n in 0..200_000 {
        now += Duration::from_millis(1);
        open.push_back(udp_flow(&mut t, n, now));
        if open.len() > 100 {
            t.remove(open.pop_front().expect("open"));
        }
        if n == 1_000 {
            peak = t.footprint();
        }
    }
    // Hash tables may double once more with deleted entries (by the hasher's seed): allow 4x.
    assert!(
        t.footprint() <= 4 * peak,
        "{} bytes after 200,000 flows vs {peak} after 1,000 (100 open)",
        t.footprint()
    );
}

/// A burst of thousands of flows that closed gives the table's memory back.
#[test]
fn a_closed_burst_gives_the_table_memory_back() {
    let mut t = FlowTable::default();
    let now = Instant::from_secs(1000);
    let idle = t.footprint();
    let ids: Vec<FlowId> = (0..4000).map(|n| udp_flow(&mut t, n, now)).collect();
    let full = t.footprint();
    for id in ids {
        t.remove(id);
    }
    let after = t.footprint();
    assert!(full > 400_000, "4000 flows take {full} bytes");
    assert!(
        after <= idle + 16_384,
        "{after} bytes kept after the burst closed (empty: {idle}, with 4000: {full})"
    );
    // And it still works.
    let id = udp_flow(&mut t, 1, now);
    assert!(t.get(id).is_some());
}
