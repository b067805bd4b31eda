//! How big a QEMU machine is, and the limits a builder's or a target's values are held to.

use super::Size;
use super::size::{GIB, MIB};
use super::value::Range;

/// How big a machine is, where the builder decides it (QEMU; an EC2 instance type decides
/// its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub vcpus: u32,
    pub memory: Size,
}

pub const VCPUS: Range<u32> = Range { min: 1, max: 64 };
pub const MEMORY: Range<Size> = Range {
    min: Size(128 * MIB),
    max: Size(256 * GIB),
};
pub const DISK: Range<Size> = Range {
    min: Size(GIB),
    max: Size(2048 * GIB),
};
pub const DEFAULT_SHAPE: Shape = Shape {
    vcpus: 2,
    memory: Size(GIB),
};
