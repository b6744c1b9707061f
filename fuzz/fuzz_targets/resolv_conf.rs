//! Fuzz target: the resolver parsers the host's DNS forwarding is configured from
//! (`qbkit_nat::resolvers`): resolv.conf `nameserver` lines, `scutil --dns` output (macOS), and
//! the ordering of Windows adapters' resolvers.
//!
//! Properties: nothing panics; every resolv.conf result comes from a `nameserver` line of the
//! text whose address prints back to the same address, on port 53, without duplicates, in the
//! order of the lines, and a link-local IPv6 one only with a zone; the zone-free list is the same
//! addresses in the same order; `scutil --dns` results carry no duplicates and only addresses
//! named on `nameserver` lines; the Windows order holds only servers of adapters that are up,
//! lowest metric first, each once.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use qbkit_nat::resolvers::{
    AdapterResolvers, order_adapter_resolvers, parse_nameservers, parse_resolv_conf,
    parse_scutil_dns,
};

#[derive(Arbitrary, Debug)]
struct Adapter {
    up: bool,
    metric: u8,
    index: u8,
    servers: Vec<(bool, u32, u16)>,
}

fn no_duplicates<T: PartialEq + std::fmt::Debug>(v: &[T]) {
    for (i, a) in v.iter().enumerate() {
        assert!(!v[..i].contains(a), "{a:?} twice in {v:?}");
    }
}

/// The address words of the text's `nameserver` lines (comments cut), in order.
fn nameserver_words(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split(['#', ';']).next().unwrap_or("").split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // The input is the text (seeds are real files); the Windows adapters are drawn from the same
    // bytes.
    let text = &String::from_utf8_lossy(data);
    let adapters_in: Vec<Adapter> = Unstructured::new(data).arbitrary().unwrap_or_default();
    // resolv.conf: interface "eth7" is index 7, nothing else is known.
    let got = parse_nameservers(text, |z| (z == "eth7").then_some(7));
    no_duplicates(&got);
    let words = nameserver_words(text);
    let mut last = 0;
    for sa in &got {
        assert_eq!(sa.port(), 53);
        // The first line at or after the previous match that names this address.
        let pos = words[last..]
            .iter()
            .position(|w| {
                let (a, zone) = w.split_once('%').map_or((*w, None), |(a, z)| (a, Some(z)));
                a.parse::<IpAddr>().ok() == Some(sa.ip())
                    && match (sa, zone) {
                        (SocketAddr::V6(v6), Some(z)) => {
                            z.parse::<u32>().ok().or((z == "eth7").then_some(7))
                                == Some(v6.scope_id())
                        }
                        (SocketAddr::V6(v6), None) => v6.scope_id() == 0,
                        (SocketAddr::V4(_), _) => true,
                    }
            })
            .unwrap_or_else(|| panic!("{sa} is not on a nameserver line after line {last}"));
        last += pos;
        if let SocketAddr::V6(v6) = sa
            && v6.ip().is_unicast_link_local()
        {
            assert!(
                words[last].contains('%'),
                "link-local {v6} without a zone accepted"
            );
        }
    }
    let plain = parse_resolv_conf(text);
    no_duplicates(&plain);
    let mut from_scoped: Vec<IpAddr> = Vec::new();
    for sa in parse_nameservers(text, |_| Some(0)) {
        if !from_scoped.contains(&sa.ip()) {
            from_scoped.push(sa.ip());
        }
    }
    assert_eq!(plain, from_scoped);

    // scutil --dns.
    let mac = parse_scutil_dns(text);
    no_duplicates(&mac);
    for sa in &mac {
        assert!(
            text.lines().any(|l| {
                let l = l.trim();
                l.starts_with("nameserver")
                    && l.split_once(':').is_some_and(|(_, v)| {
                        let v = v.trim();
                        v.split('%').next().and_then(|a| a.parse::<IpAddr>().ok()) == Some(sa.ip())
                    })
            }),
            "{sa} is on no nameserver line"
        );
    }

    // Windows adapters.
    let adapters: Vec<AdapterResolvers> = adapters_in
        .iter()
        .take(16)
        .map(|a| AdapterResolvers {
            up: a.up,
            metric: u32::from(a.metric),
            ipv6_if_index: u32::from(a.index),
            servers: a
                .servers
                .iter()
                .take(8)
                .map(|&(v4, bits, low)| {
                    if v4 {
                        IpAddr::from(bits.to_be_bytes())
                    } else {
                        // Half of them link-local.
                        let hi = if bits & 1 == 0 { 0xfe80 } else { 0x2001 };
                        IpAddr::V6(Ipv6Addr::new(hi, 0, 0, 0, 0, 0, (bits >> 16) as u16, low))
                    }
                })
                .collect(),
        })
        .collect();
    let order = order_adapter_resolvers(&adapters);
    no_duplicates(&order);
    let mut last_metric = 0;
    for sa in &order {
        assert_eq!(sa.port(), 53);
        let scoped = match sa {
            SocketAddr::V6(v6) if v6.ip().is_unicast_link_local() => Some(v6.scope_id()),
            _ => None,
        };
        let owner = adapters
            .iter()
            .filter(|a| a.up && a.servers.contains(&sa.ip()))
            .filter(|a| scoped.is_none_or(|s| a.ipv6_if_index == s))
            .map(|a| a.metric)
            .min()
            .unwrap_or_else(|| panic!("{sa} is from no adapter that is up"));
        assert!(owner >= last_metric, "{sa} out of metric order");
        last_metric = last_metric.max(owner);
    }
});
