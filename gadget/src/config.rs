//! Configuration: built-in defaults (one place), the TOML config file, and command-line overrides,
//! merged into a [`GadgetSpec`] (what the USB side looks like) and [`NetOverrides`] (static network
//! settings that win over what the host offers).
//!
//! Data flow: `main` parses flags → [`ConfigFile::load`] → [`ConfigFile::gadget_spec`] /
//! [`ConfigFile::net_overrides`]; the pure plan and the driver only see the merged values.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared_frame::usb_id;
use shared_frame::{Cidr, LinkConfig};

/// Name of the gadget directory under `/sys/kernel/config/usb_gadget/`. Only this gadget is ever
/// removed by the daemon.
pub const GADGET_NAME: &str = "qbkit";
/// Default TUN device name.
pub const DEFAULT_TUN: &str = "qbkit0";
/// Default control socket path (`status`, `teardown`).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/qbkit-gadget.sock";
/// Default config file path.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/qbkit/gadget.toml";

/// Errors while loading configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: toml::de::Error,
    },
    /// The `[usb]` gadget name cannot be a ConfigFS directory and FunctionFS instance.
    #[error(
        "name = {0:?} in [usb] must be 1 to 32 letters, digits, '-' or '_' (the ConfigFS gadget directory)"
    )]
    BadName(String),
    /// The `[network]` MTU is outside what the board accepts on a link.
    #[error(
        "mtu = {0} in [network] is outside {min}..={max} (IPv6's minimum up to what one 64 KiB bundle carries)",
        min = crate::linkcheck::MTU_RANGE.start(),
        max = crate::linkcheck::MTU_RANGE.end()
    )]
    BadMtu(u32),
    /// An address in the `[network]` table does not parse.
    #[error("invalid {field} {value:?} in [network]: expected ADDR/PREFIX")]
    BadCidr {
        /// The key.
        field: &'static str,
        /// The text given.
        value: String,
    },
}

/// The `[usb]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UsbSection {
    /// The ConfigFS gadget directory name (default `qbkit`); a second gadget on a board with
    /// two UDCs needs another one.
    pub name: Option<String>,
    /// idVendor.
    pub vendor_id: Option<u16>,
    /// idProduct.
    pub product_id: Option<u16>,
    /// bcdDevice (see [`usb_id::BCD_DEVICE`] for the bump rule).
    pub device_release: Option<u16>,
    /// Manufacturer string.
    pub manufacturer: Option<String>,
    /// Product string.
    pub product: Option<String>,
    /// Serial number; default derived from `/etc/machine-id`.
    pub serial: Option<String>,
    /// UDC name; default: the only UDC of the board.
    pub udc: Option<String>,
    /// Add a CDC-ACM serial function to the same gadget.
    pub with_serial: Option<bool>,
    /// bMaxPower in mA.
    pub max_power_ma: Option<u16>,
}

/// The `[link]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LinkSection {
    /// `functionfs` or a stream link URL.
    pub url: Option<String>,
    /// TUN device name.
    pub tun: Option<String>,
    /// Pre-shared key file for stream links (`--key`).
    pub key: Option<std::path::PathBuf>,
}

/// How DNS servers are installed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DnsMode {
    /// systemd-resolved when it runs, else /etc/resolv.conf.
    #[default]
    Auto,
    /// Only systemd-resolved (per-link DNS over D-Bus).
    Resolved,
    /// Only /etc/resolv.conf (restored on exit).
    ResolvConf,
    /// Leave DNS alone.
    Off,
}

/// The `[network]` table: static settings that win over the host's LinkConfig.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// IPv4 address/prefix.
    pub address: Option<String>,
    /// IPv4 gateway.
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 address/prefix.
    pub address6: Option<String>,
    /// IPv6 gateway.
    pub gateway6: Option<Ipv6Addr>,
    /// DNS servers.
    pub dns: Option<Vec<IpAddr>>,
    /// MTU of the TUN device, and the largest the board announces (default: the host's offer;
    /// both ends default to 65520, what one 64 KiB bundle carries).
    pub mtu: Option<u32>,
    /// Install default routes via the gateways (default true).
    pub default_route: Option<bool>,
    /// DNS installation mode.
    pub dns_mode: Option<DnsMode>,
}

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// USB identity and gadget options.
    #[serde(default)]
    pub usb: UsbSection,
    /// Link and TUN.
    #[serde(default)]
    pub link: LinkSection,
    /// Static network settings.
    #[serde(default)]
    pub network: NetworkSection,
}

impl ConfigFile {
    /// Loads `path`; a missing file at the default path is an empty config.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses config text (`path` is for messages only).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let bad_name = |n: &str| {
            !(1..=32).contains(&n.len())
                || n.chars()
                    .any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        };
        if let Some(n) = &cfg.usb.name
            && bad_name(n)
        {
            return Err(ConfigError::BadName(n.clone()));
        }
        Ok(cfg)
    }

    /// The gadget spec with defaults filled in; `machine_id` feeds the default serial.
    pub fn gadget_spec(&self, machine_id: Option<&str>) -> GadgetSpec {
        let u = &self.usb;
        GadgetSpec {
            name: u.name.clone().unwrap_or_else(|| GADGET_NAME.to_owned()),
            vendor_id: u.vendor_id.unwrap_or(usb_id::VID),
            product_id: u.product_id.unwrap_or(usb_id::PID),
            device_release: u.device_release.unwrap_or(usb_id::BCD_DEVICE),
            manufacturer: u
                .manufacturer
                .clone()
                .unwrap_or_else(|| usb_id::MANUFACTURER.to_owned()),
            product: u
                .product
                .clone()
                .unwrap_or_else(|| usb_id::PRODUCT.to_owned()),
            serial: u
                .serial
                .clone()
                .unwrap_or_else(|| serial_from_machine_id(machine_id)),
            with_serial: u.with_serial.unwrap_or(false),
            max_power_ma: u.max_power_ma.unwrap_or(500),
        }
    }

    /// The static network overrides.
    pub fn net_overrides(&self) -> Result<NetOverrides, ConfigError> {
        let n = &self.network;
        let ipv4 = n
            .address
            .as_deref()
            .map(|s| parse_cidr(s).ok_or_else(|| bad("address", s)))
            .transpose()?;
        let ipv6 = n
            .address6
            .as_deref()
            .map(|s| parse_cidr(s).ok_or_else(|| bad("address6", s)))
            .transpose()?;
        if let Some(mtu) = n.mtu
            && !crate::linkcheck::MTU_RANGE.contains(&mtu)
        {
            return Err(ConfigError::BadMtu(mtu));
        }
        Ok(NetOverrides {
            ipv4,
            gateway_v4: n.gateway,
            ipv6,
            gateway_v6: n.gateway6,
            dns: n.dns.clone(),
            mtu: n.mtu,
            default_route: n.default_route.unwrap_or(true),
            dns_mode: n.dns_mode.unwrap_or_default(),
        })
    }
}

fn bad(field: &'static str, value: &str) -> ConfigError {
    ConfigError::BadCidr {
        field,
        value: value.to_owned(),
    }
}

/// Parses `ADDR/PREFIX` into a typed CIDR.
pub fn parse_cidr<A: std::str::FromStr>(s: &str) -> Option<Cidr<A>> {
    let (a, p) = s.split_once('/')?;
    Some(Cidr {
        addr: a.parse().ok()?,
        prefix: p.parse().ok()?,
    })
}

/// Static network settings from the config file; each set field wins over the host's offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOverrides {
    /// IPv4 address.
    pub ipv4: Option<Cidr<Ipv4Addr>>,
    /// IPv4 gateway.
    pub gateway_v4: Option<Ipv4Addr>,
    /// IPv6 address.
    pub ipv6: Option<Cidr<Ipv6Addr>>,
    /// IPv6 gateway.
    pub gateway_v6: Option<Ipv6Addr>,
    /// DNS servers.
    pub dns: Option<Vec<IpAddr>>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Install default routes.
    pub default_route: bool,
    /// DNS mode.
    pub dns_mode: DnsMode,
}

impl Default for NetOverrides {
    fn default() -> Self {
        Self {
            ipv4: None,
            gateway_v4: None,
            ipv6: None,
            gateway_v6: None,
            dns: None,
            mtu: None,
            default_route: true,
            dns_mode: DnsMode::Auto,
        }
    }
}

impl NetOverrides {
    /// The host's offer with the static settings applied on top.
    pub fn apply(&self, offered: &LinkConfig) -> LinkConfig {
        LinkConfig {
            ipv4: self.ipv4.or(offered.ipv4),
            gateway_v4: self.gateway_v4.or(offered.gateway_v4),
            ipv6: self.ipv6.or(offered.ipv6),
            gateway_v6: self.gateway_v6.or(offered.gateway_v6),
            dns: self.dns.clone().unwrap_or_else(|| offered.dns.clone()),
            mtu: self.mtu.unwrap_or(offered.mtu),
        }
    }
}

/// Everything that defines the USB side of the gadget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GadgetSpec {
    /// ConfigFS gadget directory name.
    pub name: String,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// bcdDevice.
    pub device_release: u16,
    /// Manufacturer string.
    pub manufacturer: String,
    /// Product string.
    pub product: String,
    /// Serial number string.
    pub serial: String,
    /// Add a CDC-ACM function.
    pub with_serial: bool,
    /// bMaxPower in mA.
    pub max_power_ma: u16,
}

/// A stable per-board serial: the first 12 hex digits of SHA-256 over a qbkit prefix and the
/// machine id (never the raw machine id, which systemd says must not be exposed). Without a
/// machine id, a fixed serial keeps the gadget usable.
pub fn serial_from_machine_id(machine_id: Option<&str>) -> String {
    match machine_id.map(str::trim).filter(|m| !m.is_empty()) {
        Some(id) => {
            let digest = Sha256::digest(format!("qbkit-net serial:{id}").as_bytes());
            digest[..6].iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02X}");
                s
            })
        }
        None => "000000000000".to_owned(),
    }
}

/// Reads `/etc/machine-id` (falls back to the D-Bus copy).
pub fn read_machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_stable_hex_and_not_the_machine_id() {
        let a = serial_from_machine_id(Some("0123456789abcdef0123456789abcdef\n"));
        let b = serial_from_machine_id(Some("0123456789abcdef0123456789abcdef"));
        assert_eq!(a, b);
        assert_eq!(a.len(), 12);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
        assert!(!"0123456789abcdef".contains(&a.to_lowercase()));
        assert_ne!(a, serial_from_machine_id(Some("ffff")));
        assert_eq!(serial_from_machine_id(None), "000000000000");
    }

    #[test]
    fn gadget_name_is_configurable_and_checked() {
        let cfg = ConfigFile::parse("[usb]\nname = \"qbkit-b2\"\n", Path::new("t")).unwrap();
        assert_eq!(cfg.gadget_spec(None).name, "qbkit-b2");
        for bad in ["", "a/b", "..", &"x".repeat(33)] {
            let text = format!("[usb]\nname = {bad:?}\n");
            let e = ConfigFile::parse(&text, Path::new("t")).unwrap_err();
            assert!(matches!(e, ConfigError::BadName(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn example_config_parses_and_overrides_win() {
        let text = include_str!("../../configfs/gadget.example.toml");
        let cfg = ConfigFile::parse(text, Path::new("example")).unwrap();
        let spec = cfg.gadget_spec(Some("abc"));
        assert_eq!(spec.vendor_id, 0x1209);
        assert_eq!(spec.product_id, 0x0001);
        assert_eq!(spec.name, "qbkit");
        let ov = cfg.net_overrides().unwrap();
        let offered = LinkConfig {
            ipv4: parse_cidr("10.47.0.2/24"),
            gateway_v4: Some(Ipv4Addr::new(10, 47, 0, 1)),
            dns: vec![IpAddr::V4(Ipv4Addr::new(10, 47, 0, 1))],
            mtu: 16384,
            ..LinkConfig::default()
        };
        let merged = ov.apply(&offered);
        assert_eq!(merged.mtu, ov.mtu.unwrap_or(16384));
        assert_eq!(merged.ipv4, ov.ipv4.or(offered.ipv4));
    }

    #[test]
    fn static_settings_win_field_by_field() {
        let cfg = ConfigFile::parse(
            "[network]\naddress = \"192.0.2.7/28\"\ndns = [\"192.0.2.1\"]\ndefault_route = false\n",
            Path::new("t"),
        )
        .unwrap();
        let ov = cfg.net_overrides().unwrap();
        assert!(!ov.default_route);
        let offered = LinkConfig {
            ipv4: parse_cidr("10.47.0.2/24"),
            gateway_v4: Some(Ipv4Addr::new(10, 47, 0, 1)),
            mtu: 9000,
            ..LinkConfig::default()
        };
        let m = ov.apply(&offered);
        assert_eq!(m.ipv4, parse_cidr("192.0.2.7/28"));
        assert_eq!(m.gateway_v4, Some(Ipv4Addr::new(10, 47, 0, 1)));
        assert_eq!(m.dns, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(m.mtu, 9000);
    }

    #[test]
    fn link_key_path_comes_from_the_link_table() {
        let cfg = ConfigFile::parse(
            "[link]\nurl = \"tcp://192.0.2.1:4747\"\nkey = \"/etc/qbkit/link.key\"\n",
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(
            cfg.link.key.as_deref(),
            Some(Path::new("/etc/qbkit/link.key"))
        );
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let e = ConfigFile::parse("[usb]\nbogus = 1\n", Path::new("f.toml")).unwrap_err();
        assert!(e.to_string().contains("f.toml"), "{e}");
        let cfg = ConfigFile::parse("[network]\naddress = \"10.0.0.1\"\n", Path::new("f")).unwrap();
        assert!(matches!(
            cfg.net_overrides(),
            Err(ConfigError::BadCidr {
                field: "address",
                ..
            })
        ));
        // An MTU no bundle can carry is refused when the file is read, not when the host offers
        // its configuration.
        for (mtu, ok) in [(1280, true), (65520, true), (65521, false), (1000, false)] {
            let cfg =
                ConfigFile::parse(&format!("[network]\nmtu = {mtu}\n"), Path::new("f")).unwrap();
            let r = cfg.net_overrides();
            assert_eq!(r.is_ok(), ok, "mtu {mtu}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("65520"), "{e}");
            }
        }
    }
}
