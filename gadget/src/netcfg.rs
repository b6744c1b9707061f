//! I/O: the TUN device's network configuration over rtnetlink (no `ip` subprocess): link up,
//! carrier, MTU, addresses and default routes. It remembers what it installed so a new LinkConfig
//! replaces the old one instead of piling up, and so `teardown` removes only its own.
//!
//! Data flow: [`crate::driver`] turns [`crate::pump::Action`]s into calls here; TUN carrier is set
//! with `IFLA_CARRIER` (`tun` implements `ndo_change_carrier`, Linux ≥ 5.0).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
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
    routes_v4: Option<Ipv4Addr>,
    routes_v6: Option<Ipv6Addr>,
}

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
            routes_v4: None,
            routes_v6: None,
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

    /// Sets the link administratively up.
    pub async fn set_up(&self) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(self.index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(self.err("set up"))
    }

    /// Sets the carrier (lower layer up/down).
    pub async fn set_carrier(&self, on: bool) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(self.index).carrier(on).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(self.err("set carrier"))
    }

    /// Sets the MTU.
    pub async fn set_mtu(&self, mtu: u32) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(self.index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(self.err("set mtu"))
    }

    /// Applies a (merged) LinkConfig: MTU, addresses, and default routes when `default_route`.
    /// Addresses and routes from a previous call that are no longer wanted are removed.
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
            self.handle
                .address()
                .add(self.index, ip, prefix)
                .replace()
                .execute()
                .await
                .map_err(self.err("add address"))?;
        }
        self.addrs = want;

        let gw4 = lc.gateway_v4.filter(|_| default_route);
        if self.routes_v4.is_some() && self.routes_v4 != gw4 {
            self.del_default_v4().await;
        }
        if let Some(gw) = gw4 {
            let r = RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(self.index)
                .gateway(gw)
                .onlink()
                .build();
            self.handle
                .route()
                .add(r)
                .replace()
                .execute()
                .await
                .map_err(self.err("add IPv4 default route"))?;
            self.routes_v4 = Some(gw);
        }
        let gw6 = lc.gateway_v6.filter(|_| default_route);
        if self.routes_v6.is_some() && self.routes_v6 != gw6 {
            self.del_default_v6().await;
        }
        if let Some(gw) = gw6 {
            let r = RouteMessageBuilder::<Ipv6Addr>::new()
                .output_interface(self.index)
                .gateway(gw)
                .onlink()
                .build();
            self.handle
                .route()
                .add(r)
                .replace()
                .execute()
                .await
                .map_err(self.err("add IPv6 default route"))?;
            self.routes_v6 = Some(gw);
        }
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

    async fn del_default_v4(&mut self) {
        if let Some(gw) = self.routes_v4.take() {
            let r = RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(self.index)
                .gateway(gw)
                .build();
            let _ = self.handle.route().del(r).execute().await;
        }
    }

    async fn del_default_v6(&mut self) {
        if let Some(gw) = self.routes_v6.take() {
            let r = RouteMessageBuilder::<Ipv6Addr>::new()
                .output_interface(self.index)
                .gateway(gw)
                .build();
            let _ = self.handle.route().del(r).execute().await;
        }
    }
}
