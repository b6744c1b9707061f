//! Just enough USB descriptor parsing (USB 2.0 §9.6) to find the qbkit vendor interface over USB/IP:
//! the device descriptor (VID:PID) and a configuration descriptor's interfaces and bulk endpoints.
//!
//! Data flow: the transport reads the descriptors with GET_DESCRIPTOR control transfers and hands the
//! bytes to [`DeviceDescriptor::parse`] and [`parse_configuration`]; [`find_vendor_bulk`] picks the
//! interface. Parsing is total: each descriptor's bLength is checked against the buffer before it is
//! read, and a zero or short bLength is an error instead of an endless loop.
//!
//! nusb has a descriptor parser too, but it comes with nusb's OS backends; this crate's codec stays
//! free of OS dependencies, and 80 lines of walking bLength are cheaper than that coupling.

use crate::Error;

/// Descriptor type: device.
pub const DT_DEVICE: u8 = 1;
/// Descriptor type: configuration.
pub const DT_CONFIG: u8 = 2;
/// Descriptor type: interface.
pub const DT_INTERFACE: u8 = 4;
/// Descriptor type: endpoint.
pub const DT_ENDPOINT: u8 = 5;
/// Size of the device descriptor.
pub const DEVICE_DESC_LEN: usize = 18;
/// Size of the configuration descriptor header.
pub const CONFIG_DESC_LEN: usize = 9;

/// The fields of the device descriptor this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDescriptor {
    /// bcdUSB.
    pub bcd_usb: u16,
    /// bMaxPacketSize0.
    pub max_packet_size0: u8,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// bNumConfigurations.
    pub num_configurations: u8,
}

impl DeviceDescriptor {
    /// Parses the 18-byte device descriptor.
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        if b.len() < DEVICE_DESC_LEN || usize::from(b[0]) < DEVICE_DESC_LEN || b[1] != DT_DEVICE {
            return Err(Error::BadDescriptor("device descriptor"));
        }
        Ok(Self {
            bcd_usb: u16::from_le_bytes([b[2], b[3]]),
            max_packet_size0: b[7],
            vendor_id: u16::from_le_bytes([b[8], b[9]]),
            product_id: u16::from_le_bytes([b[10], b[11]]),
            num_configurations: b[17],
        })
    }
}

/// Reads wTotalLength and bConfigurationValue from a configuration descriptor's first 9 bytes.
pub fn config_header(b: &[u8]) -> Result<(u16, u8), Error> {
    if b.len() < CONFIG_DESC_LEN || usize::from(b[0]) < CONFIG_DESC_LEN || b[1] != DT_CONFIG {
        return Err(Error::BadDescriptor("configuration descriptor"));
    }
    let total = u16::from_le_bytes([b[2], b[3]]);
    if usize::from(total) < CONFIG_DESC_LEN {
        return Err(Error::BadDescriptor("wTotalLength below 9"));
    }
    Ok((total, b[5]))
}

/// An endpoint descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// bEndpointAddress (bit 7 = IN).
    pub address: u8,
    /// bmAttributes (bits 0..1: 0 control, 1 iso, 2 bulk, 3 interrupt).
    pub attributes: u8,
    /// wMaxPacketSize (bits 0..10).
    pub max_packet_size: u16,
}

impl Endpoint {
    /// Bulk endpoint?
    pub const fn is_bulk(&self) -> bool {
        self.attributes & 3 == 2
    }
    /// IN endpoint?
    pub const fn is_in(&self) -> bool {
        self.address & 0x80 != 0
    }
}

/// An interface (alternate setting) with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// bInterfaceNumber.
    pub number: u8,
    /// bAlternateSetting.
    pub alt_setting: u8,
    /// bInterfaceClass.
    pub class: u8,
    /// bInterfaceSubClass.
    pub subclass: u8,
    /// bInterfaceProtocol.
    pub protocol: u8,
    /// The endpoint descriptors that follow it.
    pub endpoints: Vec<Endpoint>,
}

/// A parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    /// bConfigurationValue.
    pub value: u8,
    /// Interfaces in descriptor order.
    pub interfaces: Vec<Interface>,
}

/// Parses a whole configuration descriptor set (wTotalLength bytes).
pub fn parse_configuration(b: &[u8]) -> Result<Configuration, Error> {
    let (total, value) = config_header(b)?;
    let b = &b[..usize::from(total).min(b.len())];
    let mut cfg = Configuration {
        value,
        interfaces: Vec::new(),
    };
    let mut off = usize::from(b[0]);
    while off + 2 <= b.len() {
        let len = usize::from(b[off]);
        if len < 2 || off + len > b.len() {
            return Err(Error::BadDescriptor(
                "descriptor length overruns the configuration",
            ));
        }
        let d = &b[off..off + len];
        match d[1] {
            DT_INTERFACE if len >= 9 => cfg.interfaces.push(Interface {
                number: d[2],
                alt_setting: d[3],
                class: d[5],
                subclass: d[6],
                protocol: d[7],
                endpoints: Vec::new(),
            }),
            DT_ENDPOINT if len >= 7 => {
                let ep = Endpoint {
                    address: d[2],
                    attributes: d[3],
                    max_packet_size: u16::from_le_bytes([d[4], d[5]]) & 0x7ff,
                };
                match cfg.interfaces.last_mut() {
                    Some(i) => i.endpoints.push(ep),
                    None => return Err(Error::BadDescriptor("endpoint before any interface")),
                }
            }
            DT_INTERFACE | DT_ENDPOINT => {
                return Err(Error::BadDescriptor("short interface or endpoint"));
            }
            _ => {} // class-specific, interface association, SuperSpeed companion: skipped
        }
        off += len;
    }
    Ok(cfg)
}

/// The vendor interface qbkit talks to: its number and its first bulk IN and bulk OUT endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VendorBulk {
    /// bInterfaceNumber.
    pub interface: u8,
    /// Bulk IN endpoint address (with bit 7).
    pub ep_in: u8,
    /// Its wMaxPacketSize.
    pub mps_in: u16,
    /// Bulk OUT endpoint address.
    pub ep_out: u8,
    /// Its wMaxPacketSize.
    pub mps_out: u16,
}

/// Finds the first alternate-setting-0 interface of class 0xff with a bulk IN and a bulk OUT endpoint.
pub fn find_vendor_bulk(cfg: &Configuration) -> Option<VendorBulk> {
    cfg.interfaces
        .iter()
        .filter(|i| i.class == 0xff && i.alt_setting == 0)
        .find_map(|i| {
            let ep_in = i.endpoints.iter().find(|e| e.is_bulk() && e.is_in())?;
            let ep_out = i.endpoints.iter().find(|e| e.is_bulk() && !e.is_in())?;
            Some(VendorBulk {
                interface: i.number,
                ep_in: ep_in.address,
                mps_in: ep_in.max_packet_size,
                ep_out: ep_out.address,
                mps_out: ep_out.max_packet_size,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration ffs-dev (usb-gadget, FunctionFS) presents at high speed: one vendor interface,
    /// bulk IN 0x81 and bulk OUT 0x02 of 512 bytes (as `lsusb -v` shows it).
    pub(crate) const FFS_CONFIG: [u8; 32] = [
        9, 2, 32, 0, 1, 1, 0, 0x80, 50, // config: wTotalLength 32, 1 interface, value 1
        9, 4, 0, 0, 2, 0xff, 0, 0, 1, // interface 0, 2 endpoints, class 0xff
        7, 5, 0x81, 2, 0x00, 0x02, 0, // EP 0x81 bulk 512
        7, 5, 0x02, 2, 0x00, 0x02, 0, // EP 0x02 bulk 512
    ];

    #[test]
    fn ffs_config() {
        let cfg = parse_configuration(&FFS_CONFIG).unwrap();
        assert_eq!(cfg.value, 1);
        assert_eq!(
            find_vendor_bulk(&cfg),
            Some(VendorBulk {
                interface: 0,
                ep_in: 0x81,
                mps_in: 512,
                ep_out: 0x02,
                mps_out: 512
            })
        );
    }

    #[test]
    fn device_descriptor() {
        let d = [
            18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0, 1, 1, 2, 3, 1,
        ];
        let dd = DeviceDescriptor::parse(&d).unwrap();
        assert_eq!(
            (dd.vendor_id, dd.product_id, dd.bcd_usb),
            (0x1209, 1, 0x200)
        );
        assert!(DeviceDescriptor::parse(&d[..17]).is_err());
    }

    #[test]
    fn bad_configs() {
        let mut c = FFS_CONFIG;
        c[18] = 0; // zero bLength: must not loop
        assert!(parse_configuration(&c).is_err());
        let mut c = FFS_CONFIG;
        c[18] = 40;
        assert!(parse_configuration(&c).is_err());
        assert!(parse_configuration(&[9, 2, 3, 0, 0, 0, 0, 0, 0]).is_err());
        // No vendor interface.
        let mut c = FFS_CONFIG;
        c[14] = 8;
        assert_eq!(find_vendor_bulk(&parse_configuration(&c).unwrap()), None);
    }
}
