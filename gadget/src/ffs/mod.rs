//! FunctionFS side of the gadget: the pure descriptor definition ([`descriptors`]) and the I/O that
//! registers the gadget and moves bulk transfers ([`usb`]), whose buffers are reused ([`recycle`]).

pub mod descriptors;
pub mod recycle;
pub mod usb;
