//! Wire formats for wasmsec: ESP (RFC 4303), UDP encapsulation of ESP and
//! IKE (RFC 3948), and the IPv4/IPv6 headers the ESP engine needs to read.
//!
//! Every packet type follows one pattern, after smoltcp's `wire` module:
//! a zero-copy `Packet<T: AsRef<[u8]>>` view whose `new_checked` validates
//! lengths once, after which no accessor panics, and a structured `Repr` with
//! `parse`, `emit` and `buffer_len`. Nothing here does I/O or allocates.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod crypto;
pub mod heads;
pub mod own_keys;
pub mod peer_keys;
pub mod runs;
mod sa_limits;
/// The view every packet type shares (smoltcp's `wire` pattern): a
/// `Packet<T>` over a buffer, `new_unchecked`, `new_checked`, and
/// `into_inner`. `check_len` refuses a buffer shorter than the fixed
/// header `$min` and then runs the module's own `check_fields`; after it
/// passed, no accessor panics.
macro_rules! packet_view {
    ($min:expr, $(#[$m:meta])*) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy)]
        pub struct Packet<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> Packet<T> {
            /// Wrap a buffer without checking it; see [`Packet::new_checked`].
            pub const fn new_unchecked(buffer: T) -> Self {
                Packet { buffer }
            }

            /// Wrap a buffer from the wire, checked by [`Packet::check_len`].
            #[inline(always)]
            pub fn new_checked(buffer: T) -> $crate::Result<Self> {
                let p = Self::new_unchecked(buffer);
                p.check_len()?;
                Ok(p)
            }

            /// At least `$min` bytes, and the fields agree with each other.
            pub fn check_len(&self) -> $crate::Result<()> {
                if self.buffer.as_ref().len() < $min {
                    return Err($crate::Error::Truncated);
                }
                self.check_fields()
            }

            /// The buffer back.
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}

pub mod esp;
pub mod ike;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod udp_encap;

pub use crypto::CryptoError;
pub use sa_limits::SaLimits;

/// Why a buffer could not be read as the packet it claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Shorter than the fixed header, or than a length field says.
    Truncated,
    /// A field holds a value the format does not allow.
    Malformed,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated packet"),
            Error::Malformed => f.write_str("malformed packet"),
        }
    }
}

pub type Result<T> = core::result::Result<T, Error>;

/// Read a big-endian u16 at `at`; callers have checked the length.
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Read a big-endian u32 at `at`; callers have checked the length.
#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
