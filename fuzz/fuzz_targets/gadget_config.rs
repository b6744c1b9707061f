//! Fuzz target: the board's TOML config file (`qbkit_gadget::config::ConfigFile::parse`) and what is
//! derived from it: the gadget spec, the ConfigFS plan, the static network overrides and their
//! application to a host offer.
//!
//! Properties: parsing never panics; a parsed file's set values are what the spec and the overrides
//! carry (defaults only where unset); `[network]` addresses that `parse_cidr` accepts are the
//! overrides' addresses and others are a `BadCidr` error, an MTU outside the link's range is a
//! `BadMtu` error; every ConfigFS path of the plan stays
//! inside the gadget's own directory whatever the strings say; applying the overrides is
//! idempotent and each set override wins over the host's offer.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qbkit_gadget::config::{ConfigError, ConfigFile, GADGET_NAME, parse_cidr};
use qbkit_gadget::configfs::plan::{Op, plan, render_shell};
use shared_frame::testing::link_config_dual_stack;
use shared_frame::usb_id;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = ConfigFile::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    let spec = cfg.gadget_spec(Some("0123456789abcdef"));
    assert_eq!(spec.name, GADGET_NAME);
    assert_eq!(spec.vendor_id, cfg.usb.vendor_id.unwrap_or(usb_id::VID));
    assert_eq!(spec.product_id, cfg.usb.product_id.unwrap_or(usb_id::PID));
    if let Some(s) = &cfg.usb.serial {
        assert_eq!(&spec.serial, s);
    } else {
        assert_eq!(spec.serial.len(), 12, "derived serial is 12 hex digits");
    }
    if let Some(m) = &cfg.usb.manufacturer {
        assert_eq!(&spec.manufacturer, m);
    }
    let root = format!("usb_gadget/{GADGET_NAME}");
    for op in plan(&spec) {
        let paths: Vec<&String> = match &op {
            Op::Mkdir(p) | Op::BindUdc(p) => vec![p],
            Op::Write { path, .. } => vec![path],
            Op::Symlink { target, link } => vec![target, link],
            Op::FunctionFs { .. } => vec![],
        };
        for p in paths {
            assert!(
                p.starts_with(&root) && !p.split('/').any(|c| c == ".."),
                "plan path {p:?} outside {root}"
            );
        }
        let _ = op.to_string();
    }
    let _ = render_shell(&spec);

    match cfg.net_overrides() {
        Ok(o) => {
            let n = &cfg.network;
            assert_eq!(o.ipv4, n.address.as_deref().map(|a| parse_cidr(a).unwrap()));
            assert_eq!(
                o.ipv6,
                n.address6.as_deref().map(|a| parse_cidr(a).unwrap())
            );
            assert_eq!(o.mtu, n.mtu);
            assert_eq!(o.dns, n.dns);
            assert_eq!(o.gateway_v4, n.gateway);
            assert_eq!(o.default_route, n.default_route.unwrap_or(true));
            let offer = link_config_dual_stack();
            let applied = o.apply(&offer);
            assert_eq!(o.apply(&applied), applied, "applying twice changes it");
            assert_eq!(applied.mtu, o.mtu.unwrap_or(offer.mtu));
            assert_eq!(applied.ipv4, o.ipv4.or(offer.ipv4));
            assert_eq!(applied.ipv6, o.ipv6.or(offer.ipv6));
            assert_eq!(&applied.dns, o.dns.as_ref().unwrap_or(&offer.dns));
            let _ = qbkit_gadget::linkcheck::check(&applied);
        }
        Err(ConfigError::BadCidr { field, value }) => {
            let bad = |v: &Option<String>| v.as_deref() == Some(value.as_str());
            assert!(
                (field == "address" && bad(&cfg.network.address))
                    || (field == "address6" && bad(&cfg.network.address6)),
                "BadCidr names {field} = {value:?}, not what the file says"
            );
        }
        Err(ConfigError::BadMtu(mtu)) => {
            assert_eq!(cfg.network.mtu, Some(mtu));
            assert!(!qbkit_gadget::linkcheck::MTU_RANGE.contains(&mtu));
        }
        Err(e) => panic!("net_overrides failed with {e}"),
    }
});
