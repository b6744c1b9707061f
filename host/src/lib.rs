//! qbkit-host library: transports (USB, streams), the driver loop and platform bits.
