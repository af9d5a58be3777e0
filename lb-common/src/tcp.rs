//! TCP header flag bits (the header's byte 13) and the option kinds the XDP program
//! reads, as the program and the tests use them.

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

/// Option kinds: end of the list, no-operation, timestamps (RFC 7323).
pub const OPT_END: u8 = 0;
pub const OPT_NOP: u8 = 1;
pub const OPT_TIMESTAMPS: u8 = 8;
/// Length of the timestamps option: kind, length, TSval, TSecr.
pub const TIMESTAMPS_LEN: u8 = 10;
