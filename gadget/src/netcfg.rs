//! I/O: the TUN device's network configuration over rtnetlink (no `ip` subprocess): link up,
//! carrier, MTU, addresses and default routes. It remembers what it installed so a new LinkConfig
//! replaces the old one instead of piling up, and so `teardown` removes only its own.
//!
//! Data flow: [`crate::driver`] turns [`crate::pump::Action`]s into calls here; TUN carrier is set
//! with `IFLA_CARRIER` (`tun` implements `ndo_change_carrier`, Linux ≥ 5.0).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use shared_frame::LinkConfig;

/// Errors of network configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Opening the netlink socket failed.
    #[error("cannot open rtnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The interface does not exist.
    #[error("network interface {0} not found")]
    NoInterface(String),
    /// A netlink request failed.
    #[error("netlink {what} on {ifname}: {source}")]
    Netlink {
        /// The operation.
        what: &'static str,
        /// The interface.
        ifname: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
}

/// Netlink configuration of one interface.
#[derive(Debug)]
pub struct NetConfig {
    handle: Handle,
    ifname: String,
    index: u32,
    addrs: Vec<(IpAddr, u8)>,
    /// The default routes installed by `apply`, by family (`V4`, `V6`).
    routes: [Option<IpAddr>; 2],
}

/// Index of the IPv4 default route in `NetConfig::routes`.
const V4: usize = 0;
/// Index of the IPv6 default route in `NetConfig::routes`.
const V6: usize = 1;

impl NetConfig {
    /// Connects to rtnetlink (spawns its connection task on the current runtime) and looks up
    /// `ifname`.
    pub async fn new(ifname: &str) -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(conn);
        let mut links = handle.link().get().match_name(ifname.to_owned()).execute();
        let index = match links.try_next().await {
            Ok(Some(l)) => l.header.index,
            _ => return Err(NetError::NoInterface(ifname.to_owned())),
        };
        Ok(Self {
            handle,
            ifname: ifname.to_owned(),
            index,
            addrs: Vec::new(),
            routes: [None; 2],
        })
    }

    /// The interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    fn err(&self, what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetError + '_ {
        move |source| NetError::Netlink {
            what,
            ifname: self.ifname.clone(),
            source,
        }
    }

    async fn set_link(&self, msg: LinkMessage, what: &'static str) -> Result<(), NetError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(self.err(what))
    }

    /// Sets the link administratively up.
    pub async fn set_up(&self) -> Result<(), NetError> {
        self.set_link(
            LinkUnspec::new_with_index(self.index).up().build(),
            "set up",
        )
        .await
    }

    /// Sets the carrier (lower layer up/down).
    pub async fn set_carrier(&self, on: bool) -> Result<(), NetError> {
        self.set_link(
            LinkUnspec::new_with_index(self.index).carrier(on).build(),
            "set carrier",
        )
        .await
    }

    /// Sets the MTU.
    pub async fn set_mtu(&self, mtu: u32) -> Result<(), NetError> {
        self.set_link(
            LinkUnspec::new_with_index(self.index).mtu(mtu).build(),
            "set mtu",
        )
        .await
    }

    /// Applies a (merged) LinkConfig: MTU, addresses, and default routes when `default_route`.
    /// Addresses and routes from a previous call that are no longer wanted are removed. The pump
    /// hands over only configurations that passed [`crate::linkcheck::check`], so without
    /// `default_route` nothing wider than the link prefix (at most /8, /48) is routed here.
    pub async fn apply(&mut self, lc: &LinkConfig, default_route: bool) -> Result<(), NetError> {
        if lc.mtu >= 576 {
            self.set_mtu(lc.mtu).await?;
        }
        let mut want: Vec<(IpAddr, u8)> = Vec::new();
        if let Some(c) = lc.ipv4 {
            want.push((IpAddr::V4(c.addr), c.prefix));
        }
        if let Some(c) = lc.ipv6 {
            want.push((IpAddr::V6(c.addr), c.prefix));
        }
        let stale: Vec<_> = self
            .addrs
            .iter()
            .filter(|a| !want.contains(a))
            .copied()
            .collect();
        for (ip, prefix) in stale {
            self.del_addr(ip, prefix).await;
        }
        for &(ip, prefix) in &want {
            let mut req = self.handle.address().add(self.index, ip, prefix).replace();
            if ip.is_ipv6() {
                // No duplicate address detection (the host's NAT is the only other end of this
                // link): the address is usable at once instead of tentative for a second.
                req.message_mut()
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            req.execute().await.map_err(self.err("add address"))?;
        }
        self.addrs = want;

        let gw4 = lc.gateway_v4.filter(|_| default_route).map(IpAddr::V4);
        self.set_default_route(V4, gw4, "add IPv4 default route")
            .await?;
        let gw6 = lc.gateway_v6.filter(|_| default_route).map(IpAddr::V6);
        self.set_default_route(V6, gw6, "add IPv6 default route")
            .await?;
        Ok(())
    }

    async fn del_addr(&self, ip: IpAddr, prefix: u8) {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .execute();
        while let Ok(Some(msg)) = stream.try_next().await {
            let matches = msg.header.prefix_len == prefix
                && msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(x) if *x == ip));
            if matches && let Err(e) = self.handle.address().del(msg).execute().await {
                tracing::debug!(%ip, error = %e, "removing old address failed");
            }
        }
    }

    /// Makes `want` the default route of one family (`V4` or `V6`): removes the one installed
    /// before when it differs, then adds (or replaces) the new one.
    async fn set_default_route(
        &mut self,
        family: usize,
        want: Option<IpAddr>,
        what: &'static str,
    ) -> Result<(), NetError> {
        if self.routes[family].is_some() && self.routes[family] != want {
            self.del_default(family).await;
        }
        if let Some(gw) = want {
            self.handle
                .route()
                .add(self.default_route_msg(gw, true))
                .replace()
                .execute()
                .await
                .map_err(self.err(what))?;
            self.routes[family] = Some(gw);
        }
        Ok(())
    }

    async fn del_default(&mut self, family: usize) {
        if let Some(gw) = self.routes[family].take() {
            let r = self.default_route_msg(gw, false);
            let _ = self.handle.route().del(r).execute().await;
        }
    }

    /// A default route through `gw` out of this interface.
    fn default_route_msg(&self, gw: IpAddr, onlink: bool) -> RouteMessage {
        fn finish<T>(b: RouteMessageBuilder<T>, onlink: bool) -> RouteMessage {
            if onlink { b.onlink() } else { b }.build()
        }
        match gw {
            IpAddr::V4(gw) => finish(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .output_interface(self.index)
                    .gateway(gw),
                onlink,
            ),
            IpAddr::V6(gw) => finish(
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .output_interface(self.index)
                    .gateway(gw),
                onlink,
            ),
        }
    }
}
