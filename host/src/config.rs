//! From command-line options to the NAT core's configuration: policy flags, MTU, the DNS
//! upstreams (from `--dns` when given, otherwise from the OS via [`crate::platform::dns_servers`])
//! and, under `--deny-lan`, the laptop's own addresses ([`crate::platform::host_addrs`]).
//! Pure (the OS is asked through closures), so the mapping is unit-tested.

use std::net::{IpAddr, SocketAddr};

use qbkit_nat::NatConfig;

/// The options of `qbkit-host run` that shape the NAT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatOptions {
    /// Let the board reach host loopback and link-local addresses.
    pub allow_host_loopback: bool,
    /// Map the gateway address (other than DNS) to 127.0.0.1 (needs `allow_host_loopback`).
    pub map_gateway_to_loopback: bool,
    /// Deny the board private networks and the laptop's own addresses.
    pub deny_lan: bool,
    /// Link MTU (`None`: the protocol default).
    pub mtu: Option<usize>,
    /// All TCP socket buffers together, bytes (`None`: the core's default).
    pub tcp_buffer_budget: Option<usize>,
    /// Upstream resolvers given on the command line (`None`: read them from the OS).
    pub dns: Option<Vec<SocketAddr>>,
}

/// Errors in the options.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `--dns` value is neither an IP address nor IP:PORT.
    #[error("--dns {0:?}: expected an IP address or IP:PORT, e.g. 192.0.2.53 or [2001:db8::53]:53")]
    BadDns(String),
    /// `--map-gateway-to-loopback` without `--allow-host-loopback`.
    #[error("--map-gateway-to-loopback needs --allow-host-loopback")]
    MapNeedsLoopback,
}

/// Parses one `--dns` value: an address (port 53) or a socket address.
pub fn parse_dns(s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| ConfigError::BadDns(s.to_owned()))
}

/// Builds the core's configuration. `os_dns` is consulted only when no `--dns` was given,
/// `host_addrs` only with `deny_lan`.
pub fn nat_config(
    opts: &NatOptions,
    os_dns: impl FnOnce() -> Vec<SocketAddr>,
    host_addrs: impl FnOnce() -> Vec<IpAddr>,
    random_seed: u64,
) -> Result<NatConfig, ConfigError> {
    if opts.map_gateway_to_loopback && !opts.allow_host_loopback {
        return Err(ConfigError::MapNeedsLoopback);
    }
    let mut c = NatConfig::default();
    c.allow_host_loopback = opts.allow_host_loopback;
    c.map_gateway_to_loopback = opts.map_gateway_to_loopback;
    c.deny_lan = opts.deny_lan;
    if opts.deny_lan {
        c.host_addrs = host_addrs();
    }
    c.mtu = opts.mtu.unwrap_or(shared_frame::DEFAULT_MTU as usize);
    if let Some(b) = opts.tcp_buffer_budget {
        c.tcp_buffer_budget = b;
    }
    c.dns_servers = match &opts.dns {
        Some(d) => d.clone(),
        None => os_dns(),
    };
    c.random_seed = random_seed;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_values() {
        assert_eq!(
            parse_dns("192.0.2.53").unwrap(),
            "192.0.2.53:53".parse().unwrap()
        );
        assert_eq!(
            parse_dns("192.0.2.53:5353").unwrap(),
            "192.0.2.53:5353".parse().unwrap()
        );
        assert_eq!(
            parse_dns("2001:db8::1").unwrap(),
            "[2001:db8::1]:53".parse().unwrap()
        );
        assert_eq!(
            parse_dns("[2001:db8::1]:54").unwrap(),
            "[2001:db8::1]:54".parse().unwrap()
        );
        assert!(matches!(
            parse_dns("resolver.example"),
            Err(ConfigError::BadDns(_))
        ));
    }

    #[test]
    fn flags_map_to_the_core_and_dns_falls_back_to_the_os() {
        let os = || vec!["127.0.0.1:53".parse().unwrap()];
        let no_addrs = || -> Vec<IpAddr> { panic!("host addresses are read only for --deny-lan") };
        let c = nat_config(&NatOptions::default(), os, no_addrs, 7).unwrap();
        assert!(!c.allow_host_loopback && !c.deny_lan && !c.map_gateway_to_loopback);
        assert!(c.host_addrs.is_empty());
        assert_eq!(c.mtu, shared_frame::DEFAULT_MTU as usize);
        assert_eq!(c.dns_servers, os());
        assert_eq!(c.random_seed, 7);

        let opts = NatOptions {
            allow_host_loopback: true,
            map_gateway_to_loopback: true,
            deny_lan: true,
            mtu: Some(1500),
            tcp_buffer_budget: Some(64 << 20),
            dns: Some(vec!["192.0.2.53:53".parse().unwrap()]),
        };
        let laptop = || vec!["192.0.2.7".parse::<IpAddr>().unwrap()];
        let c = nat_config(
            &opts,
            || panic!("the OS must not be asked when --dns is given"),
            laptop,
            0,
        )
        .unwrap();
        assert!(c.allow_host_loopback && c.deny_lan && c.map_gateway_to_loopback);
        assert_eq!(c.host_addrs, laptop());
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.tcp_buffer_budget, 64 << 20);
        assert_eq!(c.dns_servers, vec!["192.0.2.53:53".parse().unwrap()]);

        let bad = NatOptions {
            map_gateway_to_loopback: true,
            ..NatOptions::default()
        };
        assert_eq!(
            nat_config(&bad, Vec::new, Vec::new, 0),
            Err(ConfigError::MapNeedsLoopback)
        );
    }
}
