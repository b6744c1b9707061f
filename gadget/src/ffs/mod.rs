//! FunctionFS side of the gadget: the pure descriptor definition ([`descriptors`]) and the I/O that
//! registers the gadget and moves bulk transfers ([`usb`]).

pub mod descriptors;
pub mod usb;
